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
    assert.match((await h.cell(['volume', 'rm', '-f', 'data'])).stderr, /^error: volume data is in use by running VM holder: stop it first/);

    // Snapshots: the volume is unmounted for it (a file in use refuses it, naming the path) and
    // mounted again; a fork mounts the named volume as it is when the fork boots, one writer at a time.
    await h.ok(['exec', 'holder', '--', 'sh', '-c', 'echo in-ram > /tmp/mark']);
    const busy = h.cell(['exec', 'holder', '--', 'sh', '-c', 'exec 3</vol/file; echo open; sleep 5']);
    await waitFor(async () => (await h.cell(['exec', 'holder', '--', 'sh', '-c', 'ls -l /proc/*/fd 2>/dev/null | grep -c /vol/file'])).stdout.trim() !== '0', 10_000);
    assert.match((await h.cell(['snapshot', '--name', 'busy', 'holder'])).stderr, /^error: VM holder's volumes must be unmounted for a snapshot, and one cannot be: unmount \/vol: files there are in use/);
    await busy;
    await h.ok(['snapshot', '--name', 'with-vol', 'holder']);
    assert.equal((await h.ok(['exec', 'holder', '--', 'sh', '-c', 'cat /vol/file && echo later >> /vol/file'])).stdout, 'one\n', 'mounted again after the snapshot');
    assert.match((await h.cell(['fork', 'with-vol'])).stderr, /^error: volume data is in use by running VM holder/);
    await h.ok(['stop', '-t', '0', 'holder']);
    await h.ok(['fork', '--name', 'twin', 'with-vol']);
    assert.equal((await h.ok(['exec', 'twin-1', '--', 'sh', '-c', 'cat /tmp/mark /vol/file'])).stdout, 'in-ram\none\nlater\n', "the snapshot's RAM, the volume as it is now");
    // Paused to disk and back: the same.
    await h.ok(['exec', 'twin-1', '--', 'sh', '-c', 'echo from-twin >> /vol/file']);
    await h.ok(['pause', '--to-disk', 'twin-1']);
    await h.ok(['unpause', 'twin-1']);
    assert.equal((await h.ok(['exec', 'twin-1', '--', 'tail', '-n', '1', '/vol/file'])).stdout, 'from-twin\n');
    await h.ok(['rm', '-f', 'twin-1']);
    assert.equal((await h.ok(['run', '--rm', '-v', 'data:/vol', 'busybox', '--', 'cat', '/vol/file'])).stdout, 'one\nlater\nfrom-twin\n');
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

  test("a build file's volumes: every step mounts the named volume (its contents are not in the key), the result's forks too; a template's VMs as well", async () => {
    const { mkdirSync, writeFileSync } = await import('node:fs');
    const dir = `${h.home}/bld`;
    mkdirSync(dir);
    writeFileSync(
      `${dir}/build.toml`,
      ['base = "busybox"', 'volumes = ["bcache:/cache"]', '[[step]]', 'run = "echo step1 >> /cache/log"', '[[step]]', 'run = "cat /cache/log > /built.txt; echo step2 >> /cache/log"', ''].join('\n'),
    );
    await h.ok(['build', '-f', `${dir}/build.toml`, '-t', 'with-cache']);
    assert.equal((await h.ok(['run', '--rm', '--from', 'with-cache', '--', 'sh', '-c', 'cat /built.txt /cache/log'])).stdout, 'step1\nstep1\nstep2\n');
    // Unchanged: every step is a hit, nothing runs, the volume is as it was.
    const again = await h.ok(['build', '-f', `${dir}/build.toml`, '-t', 'with-cache']);
    assert.match(again.stdout + again.stderr, /0 steps ran, 2 from cache/);
    assert.equal((await h.ok(['run', '--rm', '-v', 'bcache:/c:ro', 'busybox', '--', 'cat', '/c/log'])).stdout, 'step1\nstep2\n');

    writeFileSync(
      `${dir}/template.toml`,
      ['template_id = "reader"', '[build]', 'base = "busybox"', 'volumes = ["bcache:/cache:ro"]', '[[build.step]]', 'run = "true"', '[[variants]]', 'role = "plain"', 'vcpus = 1', 'mem_mib = 256', ''].join('\n'),
    );
    // Warm: the template's VMs are forks of a snapshot whose volume was unmounted for it.
    await h.ok(['template', 'build', '--snapshot', `${dir}/template.toml`]);
    const viaTemplate = await h.ok(['run', '--rm', '--template', 'reader', '--', 'tail', '-n', '1', '/cache/log']);
    assert.match(viaTemplate.stderr, /warm start/);
    assert.equal(viaTemplate.stdout, 'step2\n');
  });

});
