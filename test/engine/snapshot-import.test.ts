/**
 * `cell snapshot import` of hostile archives, on the fake backend: every archive here is refused
 * with a clear line, before anything is recorded or any disk is opened as a disk; a good one
 * imports and forks.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, linkSync, mkdtempSync, openSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { openFakeEngine, type FakeEngine } from './harness.js';
import { MIB, snapshotArchive } from './snapshot-archives.js';
import { claimingTar, manyEntriesTar } from '../helpers/hostile-archives.js';

let fake: FakeEngine;
let work: string;
before(async () => {
  fake = await openFakeEngine();
  work = mkdtempSync('/tmp/cell-import-');
});
after(async () => {
  await fake?.cleanup();
  rmSync(work, { recursive: true, force: true });
});

/** An archive as exportSnapshot writes it, `spoil`ed first (snapshot-archives.ts). */
const archive = (spoil?: (dir: string, meta: Record<string, unknown>) => void): string => snapshotArchive(work, spoil);

async function refused(file: string, why: RegExp): Promise<void> {
  const before = fake.engine.snapshots.list().length;
  await assert.rejects(fake.engine.snapshots.import(file), (err: unknown) => {
    const e = err as { code?: string; message: string };
    assert.equal(e.code, 'invalid_argument', e.message);
    assert.match(e.message, why);
    assert.doesNotMatch(e.message, /\n/);
    return true;
  });
  assert.equal(fake.engine.snapshots.list().length, before, 'nothing recorded');
  assert.deepEqual(readdirSync(fake.paths.snapshots).filter((e) => e.startsWith('.import-')), [], 'no staging left');
}

test('a good archive imports, loses its foreign parent, and forks', async () => {
  const s = await fake.engine.snapshots.import(archive(), 'good');
  assert.equal(s.name, 'good');
  assert.equal(s.parentVm, null);
  const [vm] = await fake.engine.snapshots.fork('good', { name: 'from-import' });
  assert.equal(vm!.state, 'running');
  await fake.engine.vms.remove(vm!.id, true);
});

test('a disk naming a host file as its backing file is refused before it is ever opened as a disk', async () => {
  await refused(
    archive((dir) => {
      rmSync(join(dir, 'disk.qcow2'));
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', join(dir, 'disk.qcow2'), '64M']);
    }),
    /disk\.qcow2 names a backing file \(\/etc\/shadow\)/,
  );
});

test('a disk with an external data file is refused', async () => {
  await refused(
    archive((dir) => {
      rmSync(join(dir, 'disk.qcow2'));
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'raw.img')}`, join(dir, 'disk.qcow2'), '1M']);
    }),
    /names an external data file/,
  );
});

test('a raw file posing as the disk is refused', async () => {
  await refused(
    archive((dir) => writeFileSync(join(dir, 'disk.qcow2'), 'not a disk')),
    /disk\.qcow2 is not a qcow2 disk/,
  );
});

test('a RAM file that is a symlink (to /etc/passwd) is refused', async () => {
  await refused(
    archive((dir) => {
      rmSync(join(dir, 'memory'));
      symlinkSync('/etc/passwd', join(dir, 'memory'));
    }),
    /memory is not a plain file \(a symlink\)/,
  );
});

test('a member hard-linked to another is refused', async () => {
  await refused(
    archive((dir) => {
      rmSync(join(dir, 'state'));
      linkSync(join(dir, 'memory'), join(dir, 'state'));
    }),
    /is a hard link/,
  );
});

test('a RAM file of the wrong size for its spec is refused', async () => {
  await refused(
    archive((dir) => truncateSync(join(dir, 'memory'), 8 * MIB)),
    /RAM file is 8388608 bytes, not the 67108864 of a 64 MiB guest/,
  );
});

test('metadata is checked field by field: name, id, spec, compat', async () => {
  const spoilSnapshot = (change: (s: Record<string, unknown>) => void) =>
    archive((_dir, meta) => change(meta.snapshot as Record<string, unknown>));
  await refused(spoilSnapshot((s) => (s.name = '../../etc')), /its name: invalid name/);
  await refused(spoilSnapshot((s) => (s.id = '../x')), /id must be a string matching/);
  await refused(spoilSnapshot((s) => ((s.spec as Record<string, unknown>).memoryMib = 'lots')), /memoryMib must be a whole number/);
  await refused(spoilSnapshot((s) => ((s.spec as Record<string, unknown>).workingDir = 'relative')), /workingDir must be an absolute path/);
  await refused(spoilSnapshot((s) => ((s.spec as Record<string, unknown>).env = [1, 2])), /env must be a list of strings/);
  await refused(spoilSnapshot((s) => delete s.compat), /compat is missing/);
  await refused(archive((_dir, meta) => (meta.format = 'other/9')), /format is not cellvm-snapshot\/1/);
});

async function refusedWith(engine: FakeEngine, file: string, code: string, why: RegExp): Promise<void> {
  await assert.rejects(engine.engine.snapshots.import(file), (err: unknown) => {
    const e = err as { code?: string; message: string };
    assert.equal(e.code, code, e.message);
    assert.match(e.message, why);
    return true;
  });
  assert.equal(engine.engine.snapshots.list().length, 0, 'nothing recorded');
  assert.deepEqual(readdirSync(engine.paths.snapshots), [], 'nothing unpacked, no staging');
}

test('an archive of three million empty files is refused at its 17th entry, before tar unpacks anything', async () => {
  const other = await openFakeEngine();
  try {
    const file = join(work, 'millions.tar.gz');
    await manyEntriesTar(file, 3_000_000);
    const started = performance.now();
    await refusedWith(other, file, 'size_limit', /^snapshot archive .*millions\.tar\.gz has more than 16 entries: refused before unpacking it$/);
    console.log(`# refused 3,000,000 entries in ${Math.round(performance.now() - started)} ms`);
  } finally {
    await other.cleanup();
  }
});

test('a RAM member whose header claims 1 TiB is refused by its header, not unpacked', async () => {
  const other = await openFakeEngine();
  try {
    const file = join(work, 'claims.tar');
    await claimingTar(file, 'memory', 2 ** 40, [{ name: 'snapshot.json', data: Buffer.from('{}') }]);
    await refusedWith(other, file, 'resources_exhausted', /^the file system of .*\/snapshots has too little room: snapshot archive .*claims\.tar needs at least 1048576\.0 MiB \(its members up to memory\), [0-9.]+ MiB are free$/);
  } finally {
    await other.cleanup();
  }
});

test('importMaxBytes caps what an archive may hold', async () => {
  const capped = await openFakeEngine({ config: { importMaxBytes: 64 * 1024 } });
  try {
    await refusedWith(capped, archive(), 'size_limit', /its members add up to more than the 65536 bytes imports may take \(importMaxBytes\)/);
  } finally {
    await capped.cleanup();
  }
});

test("free space counts a sparse RAM file's blocks, not its length: on an 8 MiB file system a 64 MiB guest's snapshot imports, one with 16 MiB of touched RAM is refused", { skip: process.getuid?.() !== 0 && 'needs root to mount a small tmpfs' }, async () => {
  const small = await openFakeEngine();
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0700', 'cellt-import', small.paths.snapshots]);
  try {
    const touched = archive((dir) => {
      const fd = openSync(join(dir, 'memory'), 'r+');
      writeSync(fd, randomBytes(16 * MIB), 0, 16 * MIB, 0);
      closeSync(fd);
    });
    await refusedWith(small, touched, 'resources_exhausted', /has too little room: snapshot archive .* needs at least 1[6-7]\.[0-9] MiB \(its members up to memory\), [0-9.]+ MiB are free$/);
    const s = await small.engine.snapshots.import(archive(), 'fits');
    assert.equal(s.name, 'fits');
  } finally {
    await small.engine.close().catch(() => {});
    execFileSync('umount', [small.paths.snapshots]);
    await small.cleanup();
  }
});

test('a file that is not a tar at all is refused as before, by name', async () => {
  const file = join(work, 'not-a-tar');
  writeFileSync(file, 'SQLite format 3\0'.repeat(100));
  await assert.rejects(fake.engine.snapshots.import(file), (err: unknown) => {
    const e = err as { code?: string; message: string };
    assert.equal(e.code, 'snapshot_failed', e.message);
    assert.match(e.message, new RegExp(`^${file} is not a cellvm snapshot archive: not a tar archive`));
    return true;
  });
  assert.deepEqual(readdirSync(fake.paths.snapshots).filter((e) => e.startsWith('.import-')), []);
});
