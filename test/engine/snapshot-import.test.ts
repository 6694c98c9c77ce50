/**
 * `cell snapshot import` of hostile archives, on the fake backend: every archive here is refused
 * with a clear line, before anything is recorded or any disk is opened as a disk; a good one
 * imports and forks.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdtempSync, readdirSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openFakeEngine, type FakeEngine } from './harness.js';
import { MIB, snapshotArchive } from './snapshot-archives.js';

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
