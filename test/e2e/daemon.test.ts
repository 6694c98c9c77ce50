import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { CELL_BIN, TestHome, alive, waitFor } from '../helpers/cell-home.js';

interface VmJson {
  name: string;
  state: string;
}

describe('daemon restarts, logs -f and Ctrl-C', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  test('VMs outlive celld; the next celld reconnects to them', async () => {
    await h.ok(['run', '-d', '--name', 'survivor', 'busybox']);
    await h.ok(['exec', 'survivor', '--', 'sh', '-c', 'echo before > /root/mark']);
    const first = h.daemonPid()!;
    process.kill(first, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(first), 5000), 'celld stopped');
    assert.equal(h.qemuPids().length, 1, 'the VM kept running without celld');
    const r = await h.ok(['exec', 'survivor', '--', 'cat', '/root/mark']);
    assert.equal(r.stdout, 'before\n');
    assert.notEqual(h.daemonPid(), first, 'a new celld was started on demand');
    const [vm] = JSON.parse((await h.ok(['ps', '--format', 'json'])).stdout) as VmJson[];
    assert.equal(vm?.state, 'running');
  });

  test('a VM whose QEMU died while celld was down is recorded as stopped', async () => {
    const daemon = h.daemonPid()!;
    process.kill(daemon, 'SIGTERM');
    await waitFor(() => !alive(daemon), 5000);
    for (const pid of h.qemuPids()) process.kill(pid, 'SIGKILL');
    const [vm] = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[];
    assert.equal(vm?.state, 'stopped');
    await h.ok(['rm', 'survivor']);
  });

  test('logs -f streams until the VM stops', async () => {
    await h.ok(['run', '-d', '--name', 'talker', 'busybox', '--', 'sh', '-c', 'echo one; sleep 1; echo two']);
    const follower = spawn(CELL_BIN, ['logs', '-f', 'talker'], { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    follower.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number>((resolve) => follower.on('close', (code) => resolve(code ?? -1)));
    assert.ok(await waitFor(() => out.includes('two'), 15_000), `follow saw the later line (${JSON.stringify(out)})`);
    await h.ok(['stop', '-t', '0', 'talker']);
    assert.equal(await exited, 0, 'logs -f ended when the VM stopped');
    assert.equal(out, 'one\ntwo\n');
    await h.ok(['rm', 'talker']);
  });

  test('Ctrl-C during cell run kills the command and removes the --rm VM', async () => {
    const run = spawn(CELL_BIN, ['run', '--rm', '--name', 'interrupted', 'busybox', '--', 'sh', '-c', 'echo started; sleep 100'], {
      env: h.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    run.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number>((resolve) => run.on('close', (code) => resolve(code ?? -1)));
    assert.ok(await waitFor(() => out.includes('started'), 30_000), 'the command started');
    run.kill('SIGINT');
    assert.equal(await exited, 130);
    const gone = await waitFor(async () => {
      const vms = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[];
      return !vms.some((v) => v.name === 'interrupted');
    }, 15_000);
    assert.ok(gone, 'the VM was stopped and removed');
    assert.deepEqual(h.qemuPids(), []);
  });

  test('a --ttl that runs out while celld is down removes the --rm VM once celld is back; update changes the limits', async () => {
    await h.ok(['run', '-d', '--rm', '--name', 'brief', '--ttl', '1h', 'busybox']);
    assert.equal((await h.ok(['update', '--ttl', '6s', '--idle-timeout', '10m', 'brief'])).stdout, 'brief\n');
    const [vm] = JSON.parse((await h.ok(['inspect', 'brief'])).stdout) as { spec: { timeouts: { ttlMs: number; idleTimeoutMs: number } }; expiresAt: string }[];
    assert.deepEqual([vm!.spec.timeouts.ttlMs, vm!.spec.timeouts.idleTimeoutMs], [6000, 600_000]);
    const left = Date.parse(vm!.expiresAt) - Date.now();
    assert.ok(left > 3000 && left <= 6000, `the new TTL runs from the update: ${left} ms left`);
    assert.match((await h.cell(['update', 'brief'])).stderr, /^error: nothing to change: give --ttl/);

    const daemon = h.daemonPid()!;
    process.kill(daemon, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(daemon), 5000), 'celld stopped');
    await new Promise((r) => setTimeout(r, Math.max(0, Date.parse(vm!.expiresAt) - Date.now()) + 500));
    assert.equal(h.qemuPids().length, 1, 'nothing ends it while no celld runs');
    await h.ok(['ps']); // starts the next celld
    assert.ok(await waitFor(async () => !(await h.ok(['ps', '-a'])).stdout.includes('brief'), 30_000, 500), 'the next celld removed it');
    assert.deepEqual(h.qemuPids(), []);
  });

  test('pause --to-disk ten times in a row: each time its QEMU ends and unpause brings back its files and its running process, under the same id', async () => {
    type Inspected = { id: string; state: string; pid: number | null };
    const inspect = async () => (JSON.parse((await h.ok(['inspect', 'deep'])).stdout) as Inspected[])[0]!;
    await h.ok(['run', '-d', '--name', 'deep', 'busybox']);
    await h.ok(['exec', 'deep', '--', 'sh', '-c', 'echo kept > /root/file; (i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.2; done) </dev/null >/dev/null 2>&1 & echo $! > /tmp/counter']);
    const { id } = await inspect();
    const counter = (await h.ok(['exec', 'deep', '--', 'cat', '/tmp/counter'])).stdout.trim();
    const probe = async () => (await h.ok(['exec', 'deep', '--', 'sh', '-c', `cat /root/file; kill -0 ${counter} && echo alive; cat /tmp/n`])).stdout.trim().split('\n');
    for (let cycle = 1; cycle <= 10; cycle++) {
      await h.ok(['exec', 'deep', '--', 'sh', '-c', `echo ${cycle} >> /root/cycles`]);
      const [, , before] = await probe();
      const { pid } = await inspect();
      assert.equal((await h.ok(['pause', '--to-disk', 'deep'])).stdout, 'deep\n');
      const suspended = await inspect();
      assert.deepEqual([suspended.state, suspended.pid], ['suspended', null], `cycle ${cycle}: suspended`);
      assert.equal(alive(pid!), false, `cycle ${cycle}: its QEMU ended`);
      assert.match((await h.cell(['exec', 'deep', '--', 'true'])).stderr, /^error: VM deep is paused to disk: cell unpause deep/);
      assert.equal((await h.ok(['unpause', 'deep'])).stdout, 'deep\n');
      const back = await inspect();
      assert.deepEqual([back.id, back.state], [id, 'running']);
      const [file, state, after] = await probe();
      assert.deepEqual([file, state], ['kept', 'alive'], `cycle ${cycle}: the file and the process are back`);
      assert.ok(Number(after) >= Number(before), `cycle ${cycle}: the counter went on from where it was (${before} -> ${after})`);
    }
    assert.equal((await h.ok(['exec', 'deep', '--', 'cat', '/root/cycles'])).stdout, '1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n');
    assert.equal((await h.ok(['snapshots', '--format', 'json'])).stdout.trim(), '[]', 'no private snapshot is listed');
    await h.ok(['rm', '-f', 'deep']);
  });

  test('pause stops the guest (a counter stands still, exec is refused with the reason), stays paused across a celld restart, unpause runs it on; stop and rm -f take a paused VM', async () => {
    const testStart = new Date();
    await h.ok(['run', '-d', '--name', 'napper', 'busybox']);
    await h.ok(['exec', 'napper', '--', 'sh', '-c', '(i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done) </dev/null >/dev/null 2>&1 &']);
    const count = async () => Number((await h.ok(['exec', 'napper', '--', 'cat', '/tmp/n'])).stdout);
    const state = async () => (JSON.parse((await h.ok(['inspect', 'napper'])).stdout) as VmJson[])[0]!.state;
    assert.ok(await waitFor(async () => (await count()) > 5, 20_000, 500), 'the counter runs');

    const before = await count();
    assert.equal((await h.ok(['pause', 'napper'])).stdout, 'napper\n');
    assert.equal(await state(), 'paused');
    const refused = await h.cell(['exec', 'napper', '--', 'true']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /^error: VM napper is paused: cell unpause napper/);
    assert.match((await h.cell(['snapshot', 'napper'])).stderr, /^error: VM napper is paused/);

    // A new celld finds it paused and leaves it so.
    const first = h.daemonPid()!;
    process.kill(first, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(first), 5000), 'celld stopped');
    assert.equal(await state(), 'paused', 'still paused under the next celld');
    // The events of the first celld are kept in its database: the next one reports them.
    const kept = await h.ok(['events', '--since', testStart.toISOString(), '--until', new Date().toISOString(), '--filter', 'vm=napper']);
    assert.deepEqual(
      kept.stdout.trim().split('\n').map((line) => line.split(' ').slice(1, 3).join(' ')),
      ['vm create', 'vm start', 'vm pause'],
    );
    await new Promise((r) => setTimeout(r, 4000));
    assert.equal((await h.ok(['unpause', 'napper'])).stdout, 'napper\n');
    const after = await count();
    // Paused for over 4 s: running, it would have counted about 40 (the reattach lets it run a moment).
    assert.ok(after - before < 10, `the counter stood still while paused: ${before} -> ${after}`);
    assert.ok(await waitFor(async () => (await count()) > after + 5, 20_000, 500), 'it counts on after unpause');

    await h.ok(['pause', 'napper']);
    await h.ok(['stop', '-t', '2', 'napper']);
    assert.equal(await state(), 'stopped');
    await h.ok(['start', 'napper']);
    await h.ok(['pause', 'napper']);
    await h.ok(['rm', '-f', 'napper']);
    assert.deepEqual(h.qemuPids(), []);
  });
});
