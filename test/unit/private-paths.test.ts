/**
 * Who can see a sandbox's state: CELL_HOME and everything in it, and the guests' RAM folder on
 * tmpfs, belong to celld's user alone (folders 0700, files 0600), and a folder or file someone
 * else planted first is refused or replaced, never used.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { cellPaths } from '../../src/domain/paths.js';
import { Engine } from '../../src/engine/engine.js';
import { copySparse } from '../../src/host/files.js';
import { acquireDaemonLock } from '../../src/server/daemon-lock.js';
import { openDatabase } from '../../src/store/database.js';
import { openFakeEngine } from '../engine/harness.js';

const NOBODY = 65534;
const tmp = mkdtempSync('/tmp/cell-private-');
after(() => rmSync(tmp, { recursive: true, force: true }));

const mode = (path: string) => (lstatSync(path).mode & 0o7777).toString(8);

test('a new home is private: folders 0700, the database and its journal files 0600, the RAM folder 0700', async () => {
  const fake = await openFakeEngine();
  try {
    const { paths } = fake;
    for (const dir of [paths.home, paths.vms, paths.snapshots, paths.spares, paths.memory]) assert.equal(mode(dir), '700', dir);
    for (const file of [paths.db, `${paths.db}-wal`, `${paths.db}-shm`]) assert.equal(mode(file), '600', file);
  } finally {
    await fake.cleanup();
  }
});

test("a running VM's folder is 0700 and its RAM file 0600; a symlink planted at the RAM file's path is replaced, not written through", async () => {
  const fake = await openFakeEngine();
  try {
    const { engine, paths } = fake;
    const vm = await engine.vms.create({ image: 'busybox', name: 'ram' });
    await engine.vms.start(vm.id);
    assert.equal(mode(paths.vmDir(vm.id)), '700');
    assert.equal(mode(paths.memoryFile(vm.id)), '600');
    await engine.vms.stop(vm.id, 1);

    // Someone who could write there points the RAM file at a file of root's before the next boot.
    const victim = join(tmp, 'passwd');
    writeFileSync(victim, 'root:x:0:0:root:/root:/bin/bash\n');
    symlinkSync(victim, paths.memoryFile(vm.id));
    await engine.vms.start(vm.id);
    const ram = lstatSync(paths.memoryFile(vm.id));
    assert.ok(ram.isFile(), 'the RAM file is a new file of ours, not the planted link QEMU would open and fill');
    assert.equal(mode(paths.memoryFile(vm.id)), '600');
    assert.equal(readFileSync(victim, 'utf8'), 'root:x:0:0:root:/root:/bin/bash\n');
    await engine.vms.remove(vm.id, true);
  } finally {
    await fake.cleanup();
  }
});

test("copying a RAM file (restore, snapshot) replaces a symlink planted at the destination and makes the copy 0600", async () => {
  const dir = mkdtempSync(join(tmp, 'copy-'));
  const from = join(dir, 'memory');
  writeFileSync(from, Buffer.concat([Buffer.alloc(1 << 20), Buffer.from('guest pages')]));
  chmodSync(from, 0o644);
  const victim = join(dir, 'shadow');
  writeFileSync(victim, 'root:*:19000:0:99999:7:::\n');
  const to = join(dir, 'vm.mem');
  symlinkSync(victim, to);
  await copySparse(from, to);
  assert.equal(readFileSync(victim, 'utf8'), 'root:*:19000:0:99999:7:::\n', 'the link was not followed');
  assert.ok(lstatSync(to).isFile());
  assert.equal(mode(to), '600');
  assert.deepEqual(readFileSync(to), readFileSync(from));
  assert.ok(statSync(to).blocks * 512 < 1 << 20, 'holes stay holes');
});

/** Engine.open on a home where `plant` prepared the RAM folder; the refusal it must give. */
async function refusedMemoryFolder(plant: (memory: string) => void, why: RegExp): Promise<void> {
  let memory = '';
  await assert.rejects(
    openFakeEngine({}, { beforeOpen: (paths) => plant((memory = paths.memory)) }),
    (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'setup_failed');
      assert.ok(err.message.startsWith(`refusing to use the guest RAM folder ${memory}: `), err.message);
      assert.match(err.message, why);
      assert.doesNotMatch(err.message, /\n/);
      return true;
    },
  );
}

test('a RAM folder made first by another user is refused, naming its owner and mode', async () => {
  await refusedMemoryFolder((memory) => {
    mkdirSync(memory, { mode: 0o700 });
    chownSync(memory, NOBODY, NOBODY);
  }, /owned by another user.*\(owner uid 65534, mode 0700\)/);
});

test('a RAM folder that others may write to is refused', async () => {
  await refusedMemoryFolder((memory) => {
    mkdirSync(memory);
    chmodSync(memory, 0o1777);
  }, /other users may write to it .*\(owner uid 0, mode 01777\)/);
});

test("our own RAM folder that others could only read (an older celld's 0755) is narrowed to 0700", async () => {
  const fake = await openFakeEngine(
    {},
    {
      beforeOpen: (paths) => {
        mkdirSync(paths.memory, { recursive: true });
        chmodSync(paths.memory, 0o755);
      },
    },
  );
  try {
    assert.equal(statSync(fake.paths.memory).mode & 0o7777, 0o700);
  } finally {
    await fake.cleanup();
  }
});

test('a RAM folder that is a symlink is refused, even to a private folder', async () => {
  await refusedMemoryFolder((memory) => {
    const elsewhere = mkdtempSync(join(tmp, 'elsewhere-'));
    symlinkSync(elsewhere, memory);
  }, /it is a symlink/);
});

test('a CELL_HOME owned by another user is refused', async () => {
  let home = '';
  await assert.rejects(
    openFakeEngine({}, { beforeOpen: (paths) => chownSync((home = paths.home), NOBODY, NOBODY) }),
    (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'setup_failed');
      assert.match(err.message, new RegExp(`^refusing to use CELL_HOME ${home}: it is owned by another user, not by celld's uid 0 \\(owner uid 65534, mode 0700\\)`));
      return true;
    },
  );
});

test("an older home (0755, cell.db 0644) is narrowed: the home 0700, or 0710 with the socket's group; the database and celld.log 0600", async () => {
  const home = join(tmp, 'old-home');
  mkdirSync(home);
  chmodSync(home, 0o755);
  const paths = cellPaths(home, { CELL_MEMORY_DIR: join(home, 'memory') });
  writeFileSync(paths.daemonLog, 'old log\n', { mode: 0o644 });
  openDatabase(paths.db).close();
  chmodSync(paths.db, 0o644);

  Engine.prepareHome(paths, NOBODY);
  assert.equal(mode(home), '710');
  assert.equal(statSync(home).gid, NOBODY, "the socket's group may pass through to celld.sock");
  assert.equal(mode(paths.daemonLog), '600');
  Engine.prepareHome(paths, null);
  assert.equal(mode(home), '700');

  openDatabase(paths.db).close();
  assert.equal(mode(paths.db), '600');
});

test("celld's pid file is 0600", () => {
  const path = join(tmp, 'celld.pid');
  const release = acquireDaemonLock(path);
  try {
    assert.equal(mode(path), '600');
  } finally {
    release();
  }
  assert.equal(existsSync(path), false);
});
