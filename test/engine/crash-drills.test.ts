/**
 * Crash drills on the fake backend: celld "killed -9" at each step of a snapshot (the operation
 * freezes at a checkpoint, the daemon's connections drop, a new engine opens on the same home and
 * machines). Afterwards the VM runs with every write it made, the snapshot is either complete or
 * gone, and nothing is left behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { homeTmpPrefix } from '../../src/domain/paths.js';
import type { EngineContext } from '../../src/engine/context.js';
import type { EngineDeps } from '../../src/engine/engine.js';
import { pushImage } from '../../src/image/push.js';
import { storeTag } from '../../src/image/store-layout.js';
import { DEFAULT_TMPFS_STAGING } from '../../src/image/unpack/staging.js';
import { dockerSave, storeImage, tarOfTree } from '../image/image-builder.js';
import { startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { openFakeEngine, type FakeEngine } from './harness.js';
import { snapshotArchive } from './snapshot-archives.js';

const STEPS = ['snapshot:staged', 'snapshot:paused', 'snapshot:saved', 'snapshot:quit', 'snapshot:disk-moved', 'snapshot:published', 'snapshot:recorded'];

/** The fake's disks are text files: "overlay on <base>" plus what was written. */
function diskChainHolds(path: string, marker: string): boolean {
  for (let file: string | undefined = path, depth = 0; file && depth < 10; depth++) {
    if (!existsSync(file)) return false;
    const text: string = readFileSync(file, 'utf8');
    if (text.includes(marker)) return true;
    file = /^overlay on (.+)$/m.exec(text)?.[1];
  }
  return false;
}

for (const step of STEPS) {
  test(`kill -9 of celld at ${step}: the VM runs with its data, the snapshot is whole or gone, nothing leaks`, async () => {
    let reached!: () => void;
    const frozen = new Promise<void>((resolve) => (reached = resolve));
    const armed = { on: true };
    const fake: FakeEngine = await openFakeEngine({
      checkpoint: async (at) => {
        if (armed.on && at === step) {
          reached();
          await new Promise(() => {}); // the daemon dies here: nothing after this step runs
        }
      },
    });
    try {
      const { backend, paths } = fake;
      const created = await fake.engine.vms.create({ image: 'busybox', name: 'victim' });
      const vm = await fake.engine.vms.start(created.id);
      // The guest writes to its disk after its last snapshot: that write must survive.
      appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), `data written before ${step}\n`);
      void fake.engine.snapshots.take(vm.id, { name: 'cut' }).catch(() => {});
      await frozen;
      armed.on = false;
      const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });

      const after = engine.vms.get(vm.id)!;
      assert.equal(after.state, 'running', `the VM runs again (exit: ${JSON.stringify(after.exit)})`);
      const sink = { out: '', stdout(c: Buffer) { this.out += c; }, stderr() {} };
      assert.equal((await engine.vms.exec(vm.id, { cmd: ['echo', 'alive'] }, sink)).exitCode, 0);
      assert.equal(sink.out, 'alive\n');
      assert.ok(diskChainHolds(join(paths.vmDir(vm.id), 'disk.qcow2'), `data written before ${step}`), 'its disk still has what it wrote');

      const snapshots = engine.snapshots.list();
      assert.ok(snapshots.length <= 1);
      if (snapshots.length === 1) {
        const [s] = snapshots;
        assert.equal(s!.name, 'cut');
        assert.equal(after.baseSnapshot, s!.id, 'a finished snapshot is what the VM runs on');
        for (const f of ['state', 'memory', 'disk.qcow2']) assert.ok(existsSync(join(paths.snapshotDir(s!.id), f)), `${f} of the finished snapshot`);
        assert.ok(!existsSync(join(paths.snapshotDir(s!.id), 'intent.json')), 'its intent is done with');
      }
      // Only recorded snapshots have folders; no staging, no converter, no stray machine.
      assert.deepEqual(readdirSync(paths.snapshots).sort(), snapshots.map((s) => s.id).sort());
      assert.deepEqual(backend.alive().map((m) => m.id), [vm.id]);
      assert.deepEqual(readdirSync(paths.memory), [`${vm.id}.mem`]);
      if (['snapshot:saved', 'snapshot:quit', 'snapshot:disk-moved', 'snapshot:published', 'snapshot:recorded'].includes(step) && !backend.isRunning(vm.pid!, vm.id)) {
        assert.equal(snapshots.length, 1, 'once state and RAM were saved and the machine ended, the snapshot is finished');
      }
      await engine.vms.remove(vm.id, true);
      for (const s of engine.snapshots.list()) await engine.snapshots.remove(s.id, true);
      assert.equal(backend.alive().length, 0);
    } finally {
      await fake.cleanup();
    }
  });
}

test('removing a snapshot never removes or breaks the VMs on it; its files go with the last of them', async () => {
  const fake = await openFakeEngine();
  try {
    const { engine, paths, backend } = fake;
    const created = await engine.vms.create({ image: 'busybox', name: 'origin' });
    await engine.vms.start(created.id);
    const snap = await engine.snapshots.take(created.id, { name: 'base' });
    const [kid] = await engine.snapshots.fork('base', { name: 'kid' });
    await assert.rejects(engine.snapshots.remove('base'), (err: unknown) => /in use by VM origin, VM kid/.test((err as Error).message));
    await engine.snapshots.remove('base', true);
    assert.equal(engine.snapshots.list().length, 0, 'gone from the list at once');
    await assert.rejects(engine.snapshots.fork('base', { name: 'late' }), (err: unknown) => (err as { code?: string }).code === 'not_found');
    for (const id of [created.id, kid!.id]) {
      assert.equal(engine.vms.get(id)!.state, 'running', 'no VM is removed or stopped');
      assert.ok(backend.isRunning(engine.vms.get(id)!.pid!, id));
    }
    assert.ok(existsSync(join(paths.snapshotDir(snap.id), 'disk.qcow2')), 'the layer stays while VMs stand on it');
    // The name is free again.
    const again = await engine.snapshots.take('kid', { name: 'base' });
    assert.equal(again.parentSnapshot, snap.id, 'a snapshot of a fork chains through the retired layer');
    await engine.vms.remove('origin', true);
    assert.ok(existsSync(paths.snapshotDir(snap.id)), 'kid and the new snapshot still stand on it');
    await engine.vms.remove('kid', true);
    assert.ok(existsSync(paths.snapshotDir(snap.id)), 'the new snapshot still chains through it');
    await engine.snapshots.remove('base');
    assert.ok(!existsSync(paths.snapshotDir(snap.id)), 'its last user gone, the retired layer goes too');
    assert.deepEqual(readdirSync(paths.snapshots), []);
    // A daemon restart in between does not lose track of a retired layer.
    const vm2 = await engine.vms.create({ image: 'busybox', name: 'two' });
    await engine.vms.start(vm2.id);
    const s2 = await engine.snapshots.take(vm2.id, { name: 's2' });
    await engine.snapshots.remove('s2', true);
    const reopened = await fake.reopen();
    assert.ok(existsSync(paths.snapshotDir(s2.id)));
    await reopened.vms.remove('two', true);
    assert.ok(!existsSync(paths.snapshotDir(s2.id)));
  } finally {
    await fake.cleanup();
  }
});

test('leftovers of a dead celld are swept: import staging, folders of deleted rows', async () => {
  const fake = await openFakeEngine();
  try {
    const { paths } = fake;
    const { mkdirSync, writeFileSync } = await import('node:fs');
    mkdirSync(join(paths.snapshots, '.import-123-456'));
    writeFileSync(join(paths.snapshots, '.import-123-456', 'memory'), 'x');
    mkdirSync(paths.snapshotDir('e'.repeat(64)));
    writeFileSync(join(paths.snapshotDir('e'.repeat(64)), 'memory'), 'x');
    mkdirSync(join(paths.snapshots, '.tmp-' + 'd'.repeat(64)));
    await fake.crashAndReopen();
    assert.deepEqual(readdirSync(paths.snapshots), []);
  } finally {
    await fake.cleanup();
  }
});

test("a save's socket folder and a converter's folder in /tmp, this CELL_HOME's, are swept at start-up; another CELL_HOME's stay", async () => {
  const fake = await openFakeEngine();
  const other = '/nonexistent/other-home-' + process.pid;
  const made: string[] = [];
  try {
    // What a celld killed mid-save leaves: the folder, 0711, and its listening socket's file.
    const save = mkdtempSync(homeTmpPrefix(fake.paths.home, 'mig'));
    made.push(save);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(join(save, 'save.sock'), resolve));
    server.close();
    chmodSync(save, 0o711);
    const conv = mkdtempSync(homeTmpPrefix(fake.paths.home, 'conv'));
    made.push(conv);
    writeFileSync(join(conv, 'machine-id'), 'conv' + 'c'.repeat(64));
    const foreign = [mkdtempSync(homeTmpPrefix(other, 'mig')), mkdtempSync(homeTmpPrefix(other, 'conv'))];
    made.push(...foreign);
    mkdirSync(join(foreign[0]!, 'keep'));
    await fake.crashAndReopen();
    assert.ok(!existsSync(save), 'our save folder is gone');
    assert.ok(!existsSync(conv), 'our converter folder is gone');
    for (const dir of foreign) assert.ok(existsSync(dir), `${dir} is another CELL_HOME's: kept`);
  } finally {
    for (const dir of made) rmSync(dir, { recursive: true, force: true });
    await fake.cleanup();
  }
});

test('a full file system during a snapshot says so, with what was needed and what is free; the VM goes on', { skip: process.getuid?.() !== 0 && 'needs root to mount a small tmpfs' }, async () => {
  const { execFileSync } = await import('node:child_process');
  const { randomBytes } = await import('node:crypto');
  const { writeFileSync } = await import('node:fs');
  const fake = await openFakeEngine();
  const { engine, paths } = fake;
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'cellt-full', paths.snapshots]);
  try {
    const created = await engine.vms.create({ image: 'busybox', name: 'big' });
    const vm = await engine.vms.start(created.id);
    // The guest touched 8 MiB of its RAM: the snapshot's copy of it cannot fit in 2 MiB.
    writeFileSync(paths.memoryFile(vm.id), randomBytes(8 * 1024 * 1024));
    await assert.rejects(engine.snapshots.take(vm.id, { name: 'nope' }), (err: unknown) => {
      const e = err as { code?: string; message: string };
      return e.code === 'snapshot_failed' && /is full: the snapshot needs about 8\.0 MiB for the guest's RAM, [0-9.]+ MiB are free/.test(e.message);
    });
    assert.equal(engine.vms.get(vm.id)!.state, 'running');
    const sink = { out: '', stdout(c: Buffer) { this.out += c; }, stderr() {} };
    assert.equal((await engine.vms.exec(vm.id, { cmd: ['echo', 'fine'] }, sink)).exitCode, 0, 'the VM was resumed');
    assert.deepEqual(readdirSync(paths.snapshots), [], 'no half-written snapshot is left');
    assert.equal(engine.snapshots.list().length, 0);
  } finally {
    await fake.engine.close().catch(() => {});
    await fake.backend.killAll();
    execFileSync('umount', [paths.snapshots]);
    await fake.cleanup();
  }
});

/** Opens a fake engine whose daemon "dies" the first time it reaches `step`. */
async function dyingAt(step: string, nth = 1, deps: EngineDeps = {}): Promise<{ fake: FakeEngine; reached: Promise<void>; disarm: () => void }> {
  let reached!: () => void;
  const promise = new Promise<void>((resolve) => (reached = resolve));
  const armed = { on: true, seen: 0 };
  const fake = await openFakeEngine({
    ...deps,
    checkpoint: async (at) => {
      if (armed.on && at === step && ++armed.seen === nth) {
        reached();
        await new Promise(() => {});
      }
    },
  });
  return { fake, reached: promise, disarm: () => (armed.on = false) };
}

/** Waits until the daemon "died" at its step; an operation that ends before reaching it fails the test. */
async function cutShort(operation: Promise<unknown>, reached: Promise<void>): Promise<void> {
  const ended = operation.then(
    () => {
      throw new Error('the operation finished without reaching the step');
    },
    (err: unknown) => {
      throw new Error(`the operation failed before reaching the step: ${(err as Error).message}`);
    },
  );
  ended.catch(() => {});
  await Promise.race([reached, ended]);
}

/** Nothing of a cut-short operation is left: only `keep` VMs, their machines, folders and RAM files. */
function onlyLeft(fake: FakeEngine, engine: FakeEngine['engine'], keep: string[]): void {
  const vms = engine.vms.list(true);
  assert.deepEqual(vms.map((v) => v.name).sort(), [...keep].sort());
  assert.deepEqual(fake.backend.alive().map((m) => m.id).sort(), vms.filter((v) => v.state === 'running').map((v) => v.id).sort());
  assert.deepEqual(readdirSync(fake.paths.vms).sort(), vms.map((v) => v.id).sort());
  assert.deepEqual(readdirSync(fake.paths.memory).sort(), vms.filter((v) => v.state === 'running').map((v) => `${v.id}.mem`).sort().filter((f) => existsSync(join(fake.paths.memory, f))));
}

test('kill -9 in the middle of fork --count 3 (records made, nothing booted): the forks are gone, the source runs', async () => {
  const { fake, reached, disarm } = await dyingAt('fork:recorded');
  try {
    const src = await fake.engine.vms.create({ image: 'busybox', name: 'src' });
    await fake.engine.vms.start(src.id);
    await fake.engine.snapshots.take(src.id, { name: 'base' });
    void fake.engine.snapshots.fork('base', { count: 3, namePrefix: 'kid' }).catch(() => {});
    await reached;
    disarm();
    const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
    onlyLeft(fake, engine, ['src']);
    assert.equal(engine.vms.get(src.id)!.state, 'running');
    // The names are free again.
    assert.equal((await engine.snapshots.fork('base', { count: 3, namePrefix: 'kid' })).length, 3);
  } finally {
    await fake.cleanup();
  }
});

test('kill -9 after one fork of three reached running: that one is finished and stays, the others are gone', async () => {
  const { fake, reached, disarm } = await dyingAt('boot:running', 3);
  try {
    const src = await fake.engine.vms.create({ image: 'busybox', name: 'src' });
    await fake.engine.vms.start(src.id); // 1st boot:running
    await fake.engine.snapshots.take(src.id, { name: 'base' }); // 2nd (the source resumes)
    void fake.engine.snapshots.fork('base', { count: 3, namePrefix: 'kid' }).catch(() => {});
    await reached;
    disarm();
    // Give the siblings a moment to get as far as they get before the daemon "dies".
    await new Promise((r) => setTimeout(r, 100));
    const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
    const kids = engine.vms.list(true).filter((v) => v.name.startsWith('kid'));
    assert.ok(kids.length >= 1, 'the fork that reached running is kept');
    for (const kid of kids) assert.equal(kid.state, 'running', `${kid.name} is finished: running`);
    onlyLeft(fake, engine, ['src', ...kids.map((k) => k.name)]);
  } finally {
    await fake.cleanup();
  }
});

test("kill -9 while an action's VM runs its command: the action's VM is gone after the restart", async () => {
  const { fake, reached, disarm } = await dyingAt('boot:running', 1);
  try {
    void fake.engine.actions.run({ source: { image: 'busybox' }, cmd: ['true'] }, { mode: 'none' }, { snapshot: true }).catch(() => {});
    await reached;
    disarm();
    const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
    onlyLeft(fake, engine, []);
  } finally {
    await fake.cleanup();
  }
});

test('twenty crash-and-restart cycles with VMs, snapshots and forks leak no file descriptors and no machines', async () => {
  const fake = await openFakeEngine();
  try {
    const fds = () => readdirSync('/proc/self/fd').length;
    let engine = fake.engine;
    const vm = await engine.vms.create({ image: 'busybox', name: 'steady' });
    await engine.vms.start(vm.id);
    const before = fds();
    for (let i = 0; i < 20; i++) {
      const s = await engine.snapshots.take('steady', { name: `s${i}` });
      const [kid] = await engine.snapshots.fork(s.id, { name: `k${i}` });
      engine = i % 2 ? await fake.crashAndReopen() : await fake.reopen();
      await engine.vms.remove(kid!.id, true);
    }
    assert.deepEqual(fake.backend.alive().map((m) => m.id), [vm.id]);
    // Each machine of the fake is a child process with pipes in this process: only they count.
    assert.ok(fds() - before <= 3, `file descriptors grew from ${before} to ${fds()}`);
  } finally {
    await fake.cleanup();
  }
});

/** [step, which time it is reached]: a snapshot's resume boots through the same steps first. */
const RESTORE_STEPS: [string, number][] = [
  ['restore:halted', 1],
  ['boot:disk-dropped', 3],
  ['boot:memory-ready', 3],
  ['boot:running', 4],
];

for (const [step, nth] of RESTORE_STEPS) {
  test(`kill -9 of celld in the middle of restore, at ${step}: the VM runs on the snapshot's disk, never on none; nothing leaks`, async () => {
    const { fake, reached, disarm } = await dyingAt(step, nth);
    try {
      const { paths } = fake;
      const created = await fake.engine.vms.create({ image: 'busybox', name: 'victim' });
      const vm = await fake.engine.vms.start(created.id);
      appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), 'written before the snapshot\n');
      const snap = await fake.engine.snapshots.take(vm.id, { name: 'good' });
      appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), 'written after the snapshot\n');
      // A later snapshot: the VM's base is not the one it goes back to.
      const later = await fake.engine.snapshots.take(vm.id, { name: 'later' });
      appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), 'written after the later snapshot\n');
      await cutShort(fake.engine.snapshots.restore(vm.id, 'good'), reached);
      disarm();
      const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });

      const after = engine.vms.get(vm.id)!;
      assert.equal(after.state, 'running', `the restore was finished: the VM runs (exit: ${JSON.stringify(after.exit)})`);
      assert.equal(after.baseSnapshot, snap.id);
      const disk = join(paths.vmDir(vm.id), 'disk.qcow2');
      assert.ok(diskChainHolds(disk, 'written before the snapshot'), "it runs on the snapshot's disk");
      assert.ok(!diskChainHolds(disk, 'written after the snapshot'), 'rolled back: what came after the snapshot is gone');
      assert.ok(!diskChainHolds(disk, 'written after the later snapshot'));
      const sink = { out: '', stdout(c: Buffer) { this.out += c; }, stderr() {} };
      assert.equal((await engine.vms.exec(vm.id, { cmd: ['echo', 'alive'] }, sink)).exitCode, 0);
      assert.equal(sink.out, 'alive\n');
      onlyLeft(fake, engine, ['victim']);
      assert.deepEqual(readdirSync(paths.snapshots).sort(), [snap.id, later.id].sort());
      assert.deepEqual(readdirSync(paths.vmDir(vm.id)).filter((f) => !/\.(sock|log|pid|qcow2)$/.test(f)), [], 'no marker left behind');
      // The restore's intent is done with: a later restart does not restore again.
      appendFileSync(disk, 'written after the recovery\n');
      const again = await fake.crashAndReopen();
      assert.equal(again.vms.get(vm.id)!.state, 'running');
      assert.ok(diskChainHolds(disk, 'written after the recovery'));
    } finally {
      await fake.cleanup();
    }
  });
}

test("a restore the next celld cannot finish (its boot fails) leaves the VM stopped on the snapshot's disk, and it starts there", async () => {
  const { fake, reached, disarm } = await dyingAt('boot:disk-dropped', 1);
  try {
    const { paths, backend } = fake;
    const created = await fake.engine.vms.create({ image: 'busybox', name: 'victim' });
    const vm = await fake.engine.vms.start(created.id);
    appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), 'written before the snapshot\n');
    const snap = await fake.engine.snapshots.take(vm.id, { name: 'good', stop: true });
    await fake.engine.vms.start(vm.id);
    appendFileSync(join(paths.vmDir(vm.id), 'disk.qcow2'), 'written after the snapshot\n');
    await cutShort(fake.engine.snapshots.restore(vm.id, 'good'), reached);
    disarm();
    backend.failStarts = 1;
    const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
    const after = engine.vms.get(vm.id)!;
    assert.equal(after.state, 'stopped');
    assert.equal(after.baseSnapshot, snap.id, "its record names the snapshot's layer");
    assert.ok(!existsSync(join(paths.vmDir(vm.id), 'restoring')), 'the intent is done with');
    await engine.vms.start(vm.id);
    const disk = join(paths.vmDir(vm.id), 'disk.qcow2');
    assert.ok(diskChainHolds(disk, 'written before the snapshot'));
    assert.ok(!diskChainHolds(disk, 'written after the snapshot'));
    onlyLeft(fake, engine, ['victim']);
  } finally {
    await fake.cleanup();
  }
});

for (const step of ['snapshot-import:extracted', 'snapshot-import:checked', 'snapshot-import:published', 'snapshot-import:recorded']) {
  test(`kill -9 of celld in the middle of snapshot import, at ${step}: the snapshot is whole or gone, a running VM is untouched, nothing leaks`, async () => {
    const { fake, reached, disarm } = await dyingAt(step);
    const work = mkdtempSync('/tmp/cellt-drill-');
    try {
      const { paths } = fake;
      const bystander = await fake.engine.vms.create({ image: 'busybox', name: 'bystander' });
      await fake.engine.vms.start(bystander.id);
      const file = snapshotArchive(work);
      await cutShort(fake.engine.snapshots.import(file, 'imported'), reached);
      disarm();
      const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
      const snapshots = engine.snapshots.list();
      assert.deepEqual(readdirSync(paths.snapshots), snapshots.map((s) => s.id), 'no staging, no unrecorded folder');
      if (step === 'snapshot-import:recorded') {
        assert.equal(snapshots.length, 1, 'recorded: the import is finished');
        const [kid] = await engine.snapshots.fork('imported', { name: 'kid' });
        assert.equal(kid!.state, 'running');
        onlyLeft(fake, engine, ['bystander', 'kid']);
      } else {
        assert.equal(snapshots.length, 0, 'not recorded: the import is gone');
        // And it can be imported again, under the same name.
        assert.equal((await engine.snapshots.import(file, 'imported')).name, 'imported');
        onlyLeft(fake, engine, ['bystander']);
      }
      assert.equal(engine.vms.get(bystander.id)!.state, 'running');
    } finally {
      rmSync(work, { recursive: true, force: true });
      await fake.cleanup();
    }
  });
}

/** [step, which time it is reached] in a two-step build with a trailing env (a derived snapshot). */
const BUILD_STEPS: [string, number][] = [
  ['boot:running', 2],
  ['snapshot:saved', 1],
  ['snapshot:recorded', 1],
  ['action:snapshotted', 1],
  ['build:step-done', 1],
  ['boot:running', 3],
  ['action:snapshotted', 2],
  ['derive:published', 1],
  ['build:derived', 1],
];

for (const [step, nth] of BUILD_STEPS) {
  test(`kill -9 of celld in the middle of a build, at ${step} (#${nth}): no step VM is left, every snapshot is a cached step's, the build runs again`, async () => {
    const { fake, reached, disarm } = await dyingAt(step, nth);
    const dir = mkdtempSync('/tmp/cellt-build-');
    try {
      const { paths } = fake;
      const bystander = await fake.engine.vms.create({ image: 'busybox', name: 'bystander' });
      await fake.engine.vms.start(bystander.id); // boot:running #1
      writeFileSync(join(dir, 'build.toml'), 'base = "busybox"\n[[step]]\nrun = "true"\n[[step]]\nrun = "echo two"\n[[step]]\nenv = { MODE = "drill" }\n');
      const plan = await fake.engine.builds.load(join(dir, 'build.toml'));
      await cutShort(fake.engine.builds.build(plan, { tag: 'drilled' }), reached);
      disarm();
      const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });

      onlyLeft(fake, engine, ['bystander']);
      assert.equal(engine.vms.get(bystander.id)!.state, 'running');
      const snapshots = engine.snapshots.list();
      assert.deepEqual(readdirSync(paths.snapshots).sort(), snapshots.map((s) => s.id).sort(), 'only recorded snapshots have folders');
      for (const s of snapshots) assert.ok(engine.snapshots.holders(s.id).length > 0, `snapshot ${s.name} is held by a cache entry, not left over`);
      for (const { entry, snapshot } of engine.actions.listCache()) assert.ok(snapshot, `cache entry ${entry.key.slice(0, 12)} has its snapshot`);

      // The build again: what was finished is a cache hit, the rest runs.
      const result = await engine.builds.build(plan, { tag: 'drilled' });
      assert.equal(result.exitCode, 0);
      assert.equal(result.ran + result.cached, 2);
      assert.equal(result.snapshot!.name, 'drilled');
      assert.deepEqual(result.snapshot!.spec.env.filter((e) => e.startsWith('MODE=')), ['MODE=drill']);
      onlyLeft(fake, engine, ['bystander']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
      await fake.cleanup();
    }
  });
}

/**
 * What a pull or import leaves in the image store is what its recorded images need, and nothing
 * else: blobs, base disks, work dirs, this home's tmpfs staging, transient pins.
 */
function imageStoreHolds(fake: FakeEngine, engine: FakeEngine['engine'], references: string[]): void {
  const { db } = (engine as unknown as { ctx: EngineContext }).ctx;
  const images = engine.images.list().filter((i) => !i.builtin);
  assert.deepEqual(images.map((i) => i.reference).sort(), [...references].sort());
  const needed = (db.prepare('SELECT DISTINCT blob_digest AS d FROM image_blobs').all() as { d: string }[]).map((r) => r.d.slice(7)).sort();
  const blobDir = join(fake.paths.home, 'blobs', 'sha256');
  assert.deepEqual(existsSync(blobDir) ? readdirSync(blobDir).sort() : [], needed, 'blobs: exactly those of recorded images, no temp files');
  const diskDir = join(fake.paths.home, 'images');
  assert.deepEqual(existsSync(diskDir) ? readdirSync(diskDir).sort() : [], images.map((i) => i.diskPath.split('/').pop()!).sort(), 'base disks: only recorded ones');
  const work = join(fake.paths.home, 'tmp');
  assert.deepEqual(existsSync(work) ? readdirSync(work) : [], [], 'no work dirs');
  const tag = storeTag(fake.paths.home);
  assert.deepEqual(readdirSync(DEFAULT_TMPFS_STAGING).filter((n) => n.includes(`-${tag}-`)), [], 'no tmpfs staging of this home');
  assert.equal((db.prepare("SELECT COUNT(*) AS n FROM pins WHERE owner_kind = 'pull'").get() as { n: number }).n, 0, 'no transient pins');
  assert.equal((db.prepare('SELECT COUNT(*) AS n FROM image_blobs WHERE image_digest NOT IN (SELECT digest FROM images UNION SELECT digest FROM pins)').get() as { n: number }).n, 0);
}

describe('kill -9 of celld in the middle of image pull and import (a real registry on 127.0.0.1)', () => {
  let registry: RunningRegistry;
  let src: string;
  let oneLayer: string;
  let twoLayers: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-drill-src-');
    const retry = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };
    const one = await storeImage(src, { layers: [{ tar: tarOfTree({ 'etc/one': 'one\n' }), compression: 'gzip' }] });
    oneLayer = `${registry.host}/drill/one:v1`;
    await pushImage({ image: one.manifestDigest, reference: oneLayer, storeRoot: src, retry, dockerConfigPath: null });
    const two = await storeImage(src, {
      layers: [
        { tar: tarOfTree({ 'etc/a': 'a\n', 'bin/tool': 'v1' }), compression: 'gzip' },
        { tar: tarOfTree({ 'etc/b': 'b\n' }), compression: 'none' },
      ],
    });
    twoLayers = `${registry.host}/drill/two:v1`;
    await pushImage({ image: two.manifestDigest, reference: twoLayers, storeRoot: src, retry, dockerConfigPath: null });
  });
  after(async () => {
    await registry?.stop();
    if (src) rmSync(src, { recursive: true, force: true });
  });

  /** [step, the image pulled, whether the image is recorded when celld dies there]. */
  const PULL_STEPS: [string, () => string, boolean][] = [
    ['pull:resolved', () => twoLayers, false],
    ['pull:config-stored', () => twoLayers, false],
    // One layer: nothing else downloads while the daemon is "dead".
    ['pull:layer-stored', () => oneLayer, false],
    ['pull:unpacked', () => twoLayers, false],
    ['pull:disk-built', () => twoLayers, false],
    ['pull:recorded', () => twoLayers, true],
    ['image-cap:pinned', () => twoLayers, true],
  ];

  for (const [step, image, recorded] of PULL_STEPS) {
    test(`at ${step}: the image is recorded whole or not at all, its blobs and staging are collected, a VM runs from it after a new pull`, async () => {
      const { fake, reached, disarm } = await dyingAt(step, 1, { config: { imageCacheMaxBytes: 1024 ** 4 } });
      try {
        const ref = image();
        const bystander = await fake.engine.vms.create({ image: 'busybox', name: 'bystander' });
        await fake.engine.vms.start(bystander.id);
        await cutShort(fake.engine.images.pull({ reference: ref }), reached);
        disarm();
        const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
        imageStoreHolds(fake, engine, recorded ? [ref] : []);
        assert.equal(engine.vms.get(bystander.id)!.state, 'running');

        await engine.images.pull({ reference: ref });
        imageStoreHolds(fake, engine, [ref]);
        const vm = await engine.vms.create({ image: ref, name: 'from-pull' });
        assert.equal((await engine.vms.start(vm.id)).state, 'running');
        onlyLeft(fake, engine, ['bystander', 'from-pull']);
      } finally {
        await fake.cleanup();
      }
    });
  }

  for (const step of ['image-import:extracted', 'image-import:stored', 'image-import:unpacked', 'image-import:disk-built', 'image-import:recorded']) {
    test(`image import, at ${step}: the image is recorded whole or not at all, nothing of the import is left`, async () => {
      const { fake, reached, disarm } = await dyingAt(step);
      const dir = mkdtempSync('/tmp/cellt-drill-');
      try {
        const file = dockerSave(dir, 'example.com/drill/saved:1', [tarOfTree({ 'bin/app': 'app' }), tarOfTree({ 'etc/conf': 'c' })]);
        await cutShort(fake.engine.images.importArchive(file), reached);
        disarm();
        const engine = await fake.crashAndReopen({ deps: { checkpoint: async () => {} } });
        imageStoreHolds(fake, engine, step === 'image-import:recorded' ? ['example.com/drill/saved:1'] : []);
        await engine.images.importArchive(file);
        imageStoreHolds(fake, engine, ['example.com/drill/saved:1']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
        await fake.cleanup();
      }
    });
  }
});

test("a download cut short leaves temp blobs, work dirs, a half-built disk and tmpfs staging: this home's go at start-up, another home's staging stays", async () => {
  const fake = await openFakeEngine();
  const foreign = join(DEFAULT_TMPFS_STAGING, `cellvm-unpack-${process.pid}-${storeTag('/nonexistent/other')}-drill`);
  const ours = join(DEFAULT_TMPFS_STAGING, `cellvm-unpack-${process.pid}-${storeTag(fake.paths.home)}-drill`);
  try {
    const { home } = fake.paths;
    for (const d of [join(home, 'blobs', 'sha256'), join(home, 'tmp', 'unpack-x', 'rootfs'), join(home, 'images'), join(ours, 'rootfs'), foreign]) mkdirSync(d, { recursive: true });
    writeFileSync(join(home, 'blobs', 'sha256', '.tmp-0123456789abcdef'), 'half a layer');
    writeFileSync(join(home, 'blobs', 'sha256', 'e'.repeat(64)), 'a blob nothing pins');
    writeFileSync(join(home, 'images', `.${'d'.repeat(64)}.ext4.tmp-abcdef`), 'half a disk');
    writeFileSync(join(home, 'images', `${'d'.repeat(64)}.ext4`), 'a disk nothing records');
    writeFileSync(join(ours, 'rootfs', 'file'), 'staged');
    // Our own pid: only the store's tag says the staging is this home's (the pid may be reused).
    const engine = await fake.crashAndReopen();
    imageStoreHolds(fake, engine, []);
    assert.ok(existsSync(foreign), "another home's staging is not ours to remove");
  } finally {
    rmSync(foreign, { recursive: true, force: true });
    rmSync(ours, { recursive: true, force: true });
    await fake.cleanup();
  }
});

// Before the machine ended, recovery undoes the snapshot (the VM runs); after, the VM is paused to disk.
for (const [step, expected] of [['snapshot:saved', 'running'], ['snapshot:recorded', 'suspended'], ['boot:memory-ready', 'suspended']] as const) {
  test(`kill -9 of celld at ${step} of a pause to disk or its unpause: the VM ends up paused to disk (or running), never lost, and unpause brings it back`, async () => {
    let reached!: () => void;
    const frozen = new Promise<void>((resolve) => (reached = resolve));
    const armed = { on: false };
    const fake: FakeEngine = await openFakeEngine({
      checkpoint: async (at) => {
        if (armed.on && at === step) {
          reached();
          await new Promise(() => {}); // the daemon dies here
        }
      },
    });
    try {
      const created = await fake.engine.vms.create({ image: 'busybox', name: 'dozer' });
      await fake.engine.vms.start(created.id);
      const resuming = step.startsWith('boot:');
      if (resuming) await fake.engine.suspends.suspend('dozer');
      armed.on = true;
      void (resuming ? fake.engine.suspends.resume('dozer') : fake.engine.suspends.suspend('dozer')).catch(() => {});
      await frozen;
      armed.on = false;
      const engine = await fake.crashAndReopen();
      const after = engine.vms.resolve('dozer');
      assert.equal(after.state, expected);
      assert.equal(engine.snapshots.list().length, 0, 'its snapshot is private whatever happened');
      if (after.state === 'suspended') assert.equal((await engine.suspends.resume('dozer')).state, 'running');
      await engine.vms.remove('dozer', true);
    } finally {
      await fake.cleanup();
    }
  });
}
