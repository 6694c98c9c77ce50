import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestHome, waitFor } from '../helpers/cell-home.js';

// A VM's data disk (/data) through the life of a VM: snapshots keep it, forks get their own copy.
describe('data disks', () => {
  let h: TestHome;
  let other: TestHome;
  before(() => {
    h = new TestHome();
    other = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    await other.cleanup();
    assert.deepEqual(h.qemuPids(), []);
    assert.deepEqual(other.qemuPids(), []);
  });

  test('an empty ext4 disk at /data, kept across stop and start', async () => {
    await h.ok(['run', '-d', '--name', 'box', '--data-disk', '32', 'busybox']);
    const r = await h.ok(['exec', 'box', '--', 'sh', '-c', "ls -A /data | grep -v lost+found; mount | grep ' /data ' | cut -d' ' -f5; echo kept > /data/file"]);
    assert.equal(r.stdout, 'ext4\n', 'empty apart from lost+found');
    await h.ok(['stop', 'box']);
    await h.ok(['start', 'box']);
    assert.equal((await h.ok(['exec', 'box', '--', 'cat', '/data/file'])).stdout, 'kept\n');
    const none = await h.ok(['run', '--rm', 'busybox', '--', 'sh', '-c', 'mount | grep -c " /data " || true']);
    assert.equal(none.stdout, '0\n', 'no data disk unless asked for');
    const bad = await h.cell(['run', '--rm', '--data-disk', '0', 'busybox', '--', 'true']);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /--data-disk 0 is out of range/);
  });

  test('snapshots keep the data disk; forks see it and write only their own', async () => {
    await h.ok(['snapshot', '--name', 'with-data', 'box']);
    await h.ok(['fork', '--count', '2', '--name', 'kid', 'with-data']);
    await h.ok(['exec', 'kid-1', '--', 'sh', '-c', 'echo kid-1 > /data/file']);
    const seen = await Promise.all(['kid-1', 'kid-2', 'box'].map(async (vm) => (await h.ok(['exec', vm, '--', 'cat', '/data/file'])).stdout));
    assert.deepEqual(seen, ['kid-1\n', 'kept\n', 'kept\n']);
    // The next fork resumes a spare that was restored with the data disk attached.
    assert.ok(await waitFor(async () => JSON.parse((await h.ok(['info', '--format', 'json'])).stdout).spares === 1, 20_000, 100));
    const r = await h.ok(['run', '--rm', '--from', 'with-data', '--', 'sh', '-c', 'cat /data/file; echo spare > /data/file; cat /data/file']);
    assert.equal(r.stdout, 'kept\nspare\n');
  });

  test('export and import carry the data disk to another host', async () => {
    const file = join(h.home, 'with-data.cellsnap');
    await h.ok(['snapshot', 'export', 'with-data', file]);
    await other.ok(['snapshot', 'import', file]);
    const r = await other.ok(['run', '--rm', '--from', 'with-data', '--', 'cat', '/data/file']);
    assert.equal(r.stdout, 'kept\n');
  });
});
