import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { TestHome, alive, waitFor } from '../helpers/cell-home.js';

// Named volumes on real VMs: data across VMs, read-only mounts, the one-writer rule, rm and prune,
// the snapshot rule, and celld killed -9 while a volume is attached.
describe('named volumes', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  test('what one VM writes the next one reads; :ro is read-only; run -v makes a missing volume', async () => {
    await h.ok(['run', '--rm', '-v', 'data:/vol', 'busybox', '--', 'sh', '-c', 'echo one > /vol/file; sync']);
    assert.equal((await h.ok(['run', '--rm', '-v', 'data:/vol:ro', 'busybox', '--', 'cat', '/vol/file'])).stdout, 'one\n');
    const denied = await h.cell(['run', '--rm', '-v', 'data:/vol:ro', 'busybox', '--', 'sh', '-c', 'echo two > /vol/file']);
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /Read-only file system/);
    const [view] = JSON.parse((await h.ok(['volume', 'inspect', 'data'])).stdout) as { sizeBytes: number; usedBytes: number; users: unknown[] }[];
    assert.equal(view!.sizeBytes, 10 * 1024 ** 3);
    assert.ok(view!.usedBytes < 256 * 1024 ** 2, `sparse: ${view!.usedBytes} bytes on the host`);
    assert.deepEqual(view!.users, [], '--rm VMs are gone');
  });

  test('one writer: a second read-write VM is refused naming the holder, allowed after it stops; rm, rm -f and prune', async () => {
    await h.ok(['run', '-d', '--name', 'holder', '-v', 'data:/vol', 'busybox']);
    const refused = await h.cell(['run', '--rm', '-v', 'data:/vol', 'busybox', '--', 'true']);
    assert.equal(refused.code, 125);
    assert.match(refused.stderr, /^error: volume data is in use by running VM holder: one VM writes a volume at a time/m);
    assert.equal((await h.ok(['ps', '-a', '-q'])).stdout.trim().split('\n').length, 1, 'the refused run left no VM');
    assert.match((await h.cell(['snapshot', 'holder'])).stderr, /^error: VM holder mounts volume data: a snapshot \(or pause --to-disk\) of a VM with volumes or host folders is refused/);
    assert.match((await h.cell(['volume', 'rm', '-f', 'data'])).stderr, /^error: volume data is in use by running VM holder: stop it first/);

    await h.ok(['stop', '-t', '0', 'holder']);
    assert.equal((await h.ok(['run', '--rm', '-v', 'data:/vol', 'busybox', '--', 'cat', '/vol/file'])).stdout, 'one\n');
    assert.match((await h.cell(['volume', 'rm', 'data'])).stderr, /^error: volume data is mounted by VM holder \(stopped\)/);
    assert.equal((await h.ok(['volume', 'rm', '-f', 'data'])).stdout, 'data\n');
    assert.match((await h.cell(['start', 'holder'])).stderr, /^error: VM holder mounts volume data, which is gone/);
    await h.ok(['rm', 'holder']);

    await h.ok(['volume', 'create', '--size', '64M', 'kept']);
    await h.ok(['volume', 'create', 'unused']);
    await h.ok(['run', '-d', '--name', 'keeper', '-v', 'kept:/k', 'busybox']);
    assert.equal((await h.ok(['volume', 'prune', '-f'])).stdout, 'unused\n');
    assert.match((await h.ok(['volume', 'ls'])).stdout, /kept\s+64 MiB .* keeper:\/k/);
    await h.ok(['rm', '-f', 'keeper']);
  });

  test('celld killed -9 while a VM has a volume: the VM goes on; once it stops, the next VM mounts the volume with the data; export and import', async () => {
    await h.ok(['run', '-d', '--name', 'survivor', '-v', 'kept:/k', 'busybox']);
    await h.ok(['exec', 'survivor', '--', 'sh', '-c', 'echo before-kill > /k/mark; sync']);
    const daemon = h.daemonPid()!;
    process.kill(daemon, 'SIGKILL');
    assert.ok(await waitFor(() => !alive(daemon), 5000), 'celld is gone');
    assert.equal((await h.ok(['exec', 'survivor', '--', 'cat', '/k/mark'])).stdout, 'before-kill\n', 'a new celld reaches it');
    assert.match((await h.cell(['run', '--rm', '-v', 'kept:/k', 'busybox', '--', 'true'])).stderr, /in use by running VM survivor/);
    await h.ok(['stop', '-t', '0', 'survivor']);
    assert.equal((await h.ok(['run', '--rm', '-v', 'kept:/k', 'busybox', '--', 'cat', '/k/mark'])).stdout, 'before-kill\n');
    await h.ok(['rm', 'survivor']);

    // Export and import: the files come back under a new name; a tampered archive is refused.
    const archive = `${h.home}/kept.tar`;
    assert.match((await h.ok(['volume', 'export', 'kept', archive])).stdout, /kept\.tar \(/);
    assert.equal((await h.ok(['volume', 'import', '--name', 'copy', archive])).stdout, 'copy\n');
    assert.equal((await h.ok(['run', '--rm', '-v', 'copy:/c:ro', 'busybox', '--', 'cat', '/c/mark'])).stdout, 'before-kill\n');
    assert.match((await h.cell(['volume', 'import', archive])).stderr, /^error: a volume named kept exists already: import it with --name/);
    const { writeFileSync } = await import('node:fs');
    writeFileSync(`${h.home}/bad.tar`, 'not a tar');
    assert.match((await h.cell(['volume', 'import', '--name', 'bad', `${h.home}/bad.tar`])).stderr, /^error: .*bad\.tar is not a usable cellvm volume archive/);
    await h.ok(['volume', 'rm', 'copy']);
    await h.ok(['volume', 'rm', 'kept']);
    assert.equal((await h.ok(['volume', 'ls', '--format', 'json'])).stdout.trim(), '[]');
  });
});
