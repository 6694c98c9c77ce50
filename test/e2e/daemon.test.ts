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
});
