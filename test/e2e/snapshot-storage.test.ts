import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestHome } from '../helpers/cell-home.js';
import { mountReflinkFs, type ReflinkFs } from '../helpers/reflink-fs.js';

interface SnapshotJson {
  id: string;
  name: string;
  parentSnapshot: string | null;
  memoryBytes: number;
}
interface Usage {
  snapshots: { count: number; logicalBytes: number; usedBytes: number };
  snapshotRam: { mode: string; reason: string };
}

const STEPS = 10;

// Snapshots on a file system with reflinks (docs/architecture.md, "Snapshot storage"): a snapshot's RAM
// file is a clone of its parent's with the changed pages written, so a build costs what its steps changed.
describe('snapshot storage on XFS with reflinks', () => {
  let fs: ReflinkFs;
  let h: TestHome;
  before(() => {
    fs = mountReflinkFs(8192);
    h = new TestHome({}, join(fs.dir, 'h'));
  });
  after(async () => {
    try {
      await h?.cleanup();
      assert.deepEqual(h?.qemuPids() ?? [], []);
    } finally {
      fs?.dispose();
    }
  });

  const snapshots = async () => JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as SnapshotJson[];
  const df = async () => JSON.parse((await h.ok(['system', 'df', '--format', 'json'])).stdout) as Usage;
  /** What the RAM files would hold stored whole: each file's allocated blocks, shared ones included. */
  const wholeRam = (s: SnapshotJson) => statSync(join(h.home, 'snapshots', s.id, 'memory')).blocks * 512;

  test(`a ${STEPS}-step build of small steps costs its changed pages, and forks of every step see their own RAM`, async (t) => {
    const steps = Array.from({ length: STEPS }, (_, i) => `[[step]]\nname = "s${i + 1}"\nrun = "echo ${i + 1} >> /tmp/steps"\n`).join('\n');
    writeFileSync(join(h.home, 'build.toml'), `base = "busybox"\n\n${steps}`);
    await h.ok(['build', '-f', join(h.home, 'build.toml'), '-t', 'result'], { timeoutMs: 300_000 });

    const all = await snapshots();
    assert.equal(all.length, STEPS, 'one snapshot per step (the result is the last one)');
    const whole = all.reduce((n, s) => n + wholeRam(s), 0);
    const usage = await df();
    const used = usage.snapshots.usedBytes;
    assert.equal(usage.snapshotRam.mode, 'shared', usage.snapshotRam.reason);
    // Whole, ten RAM files of an idle busybox guest; shared, the first step's and what the others changed.
    assert.ok(used < whole / 3, `the snapshots use ${used} bytes on disk against ${whole} for their RAM files stored whole`);
    const children = all.filter((s) => s.parentSnapshot);
    assert.ok(children.length >= STEPS - 1);
    for (const child of children) {
      assert.ok(child.memoryBytes < wholeRam(child) / 4, `${child.name}'s RAM adds ${child.memoryBytes} of ${wholeRam(child)} bytes`);
    }
    t.diagnostic(`${STEPS}-step build: snapshots use ${(used / 2 ** 20).toFixed(1)} MiB on disk, their RAM files whole ${(whole / 2 ** 20).toFixed(1)} MiB`);

    // /tmp is the guest's tmpfs: what each step wrote lives in the RAM file alone.
    assert.equal((await h.ok(['run', '--rm', '--from', 'result', '--', 'cat', '/tmp/steps'])).stdout, Array.from({ length: STEPS }, (_, i) => `${i + 1}\n`).join(''));
    // An earlier step's snapshot, its RAM a clone of its own parent's, forks as it was then.
    const byId = new Map(all.map((s) => [s.id, s]));
    let mid = byId.get((await snapshots()).find((s) => s.name === 'result')!.id)!;
    for (let i = STEPS; i > 4; i--) mid = byId.get(mid.parentSnapshot!)!;
    assert.equal((await h.ok(['run', '--rm', '--from', mid.id, '--', 'cat', '/tmp/steps'])).stdout, '1\n2\n3\n4\n');
  });

  test('a snapshot of a fork (RAM mapped from its snapshot, saved through a converter) is stored against that snapshot too', async () => {
    await h.ok(['fork', '--name', 'f', 'result']);
    await h.ok(['exec', 'f-1', '--', 'sh', '-c', 'echo fork >> /tmp/steps']);
    await h.ok(['snapshot', '--name', 'of-fork', 'f-1']);
    const snap = (await snapshots()).find((s) => s.name === 'of-fork')!;
    assert.ok(snap.memoryBytes < wholeRam(snap) / 4, `its RAM adds ${snap.memoryBytes} of ${wholeRam(snap)} bytes`);
    // The VM went on from the snapshot, with its own copy of the RAM.
    assert.match((await h.ok(['exec', 'f-1', '--', 'cat', '/tmp/steps'])).stdout, /10\nfork\n$/);
    await h.ok(['rm', '-f', 'f-1']);

    assert.match((await h.ok(['run', '--rm', '--from', 'of-fork', '--', 'cat', '/tmp/steps'])).stdout, /^1\n2\n[\s\S]*10\nfork\n$/);
    const listing = (await h.ok(['snapshots'])).stdout;
    assert.match(listing, /of-fork/);
  });

  test('a snapshot imported (or pulled) after its parent is stored against the parent there too', async () => {
    const g = new TestHome({}, join(fs.dir, 'g'));
    try {
      for (const name of ['result', 'of-fork']) await h.ok(['snapshot', 'export', name, join(fs.dir, `${name}.cellsnap`)]);
      await g.ok(['snapshot', 'import', join(fs.dir, 'result.cellsnap')]);
      await g.ok(['snapshot', 'import', join(fs.dir, 'of-fork.cellsnap')]);
      const [parent, child] = JSON.parse((await g.ok(['snapshots', '--format', 'json'])).stdout) as SnapshotJson[];
      // Not its parent here (its disk is whole, not an overlay): the RAM it is stored against.
      assert.equal(child!.name, 'of-fork');
      assert.equal(child!.parentSnapshot, null);
      const whole = statSync(join(g.home, 'snapshots', child!.id, 'memory')).blocks * 512;
      assert.ok(child!.memoryBytes < whole / 4, `the imported child's RAM adds ${child!.memoryBytes} of ${whole} bytes`);
      assert.ok(parent!.memoryBytes > whole / 2, `the parent, with nothing under it here, is whole: ${parent!.memoryBytes}`);
      assert.match((await g.ok(['run', '--rm', '--from', 'of-fork', '--', 'cat', '/tmp/steps'])).stdout, /10\nfork\n$/);
    } finally {
      await g.cleanup();
    }
  });
});
