/**
 * Crash drills on real QEMU: celld kills itself with SIGKILL (CELL_CRASH_AT) at a step of
 * `cell snapshot`, and the next celld (started by the next command) must find the VM running with
 * its data, and the snapshot finished or gone. The same drills run at every step on the fake
 * backend (test/engine/crash-drills.test.ts); these check that the fake tells the truth.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { homeTmpPrefix } from '../../src/domain/paths.js';
import { alive, TestHome, waitFor } from '../helpers/cell-home.js';

interface VmJson {
  name: string;
  state: string;
  pid: number | null;
  baseSnapshot: string | null;
}

describe('celld killed -9 in the middle of a snapshot', () => {
  let h: TestHome;
  before(async () => {
    h = new TestHome();
    await h.ok(['run', '-d', '--name', 'box', 'busybox']);
  });
  after(async () => {
    await h.cleanup();
  });

  /** Restarts celld with CELL_CRASH_AT set, runs `args`, and waits for the crash. */
  async function cutAt(step: string, args: string[]): Promise<void> {
    const daemon = h.daemonPid()!;
    process.kill(daemon, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(daemon), 10_000));
    const cut = await h.cell(args, { env: { CELL_CRASH_AT: step } });
    assert.notEqual(cut.code, 0, 'the command lost its daemon');
    const crashed = h.daemonPid();
    assert.ok(crashed === null || (await waitFor(() => !alive(crashed), 10_000)), 'celld died at the step');
  }

  async function snapshotCutAt(step: string, name: string, data: string): Promise<void> {
    await h.ok(['exec', 'box', '--', 'sh', '-c', `echo ${data} > /root/data`]);
    await cutAt(step, ['snapshot', '--name', name, 'box']);
  }

  async function vm(): Promise<VmJson> {
    const list = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[];
    return list.find((v) => v.name === 'box')!;
  }

  test('cut while the guest was paused: the next celld resumes the VM on its own disk and drops the half snapshot', async () => {
    await snapshotCutAt('snapshot:paused', 'never', 'before-paused');
    const box = await vm();
    assert.equal(box.state, 'running');
    assert.equal((await h.ok(['exec', 'box', '--', 'cat', '/root/data'])).stdout, 'before-paused\n', 'the guest runs again, with what it wrote');
    const names = (JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[]).map((s) => s.name);
    assert.ok(!names.includes('never'));
    assert.deepEqual(readdirSync(join(h.home, 'snapshots')).filter((e) => e.startsWith('.')), [], 'no staging left');
  });

  test('cut after the disk moved into the snapshot: the next celld finishes it and the VM runs on it', async () => {
    await snapshotCutAt('snapshot:disk-moved', 'finished', 'before-disk-moved');
    const box = await vm();
    assert.equal(box.state, 'running');
    assert.equal((await h.ok(['exec', 'box', '--', 'cat', '/root/data'])).stdout, 'before-disk-moved\n');
    const snapshots = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { id: string; name: string }[];
    const finished = snapshots.find((s) => s.name === 'finished');
    assert.ok(finished, 'the snapshot was finished');
    assert.equal(box.baseSnapshot, finished.id);
    assert.ok(!existsSync(join(h.home, 'snapshots', finished.id, 'intent.json')));
    // It is a whole snapshot: a fork of it has the data too.
    const fork = await h.ok(['run', '--rm', '--from', 'finished', '--', 'cat', '/root/data']);
    assert.equal(fork.stdout, 'before-disk-moved\n');
    assert.ok(h.qemuPids().includes((await vm()).pid!), 'the VM is the QEMU its record names');
  });

  test("restore cut between dropping the VM's disk and recording its new base: the next celld finishes it, on the snapshot's disk", async () => {
    await h.ok(['exec', 'box', '--', 'sh', '-c', 'echo at-snapshot > /root/data']);
    await h.ok(['snapshot', '--name', 'back', 'box']);
    await h.ok(['exec', 'box', '--', 'sh', '-c', 'echo after-snapshot > /root/data; sync']);
    await cutAt('boot:disk-dropped', ['restore', 'box', 'back']);
    const box = await vm();
    assert.equal(box.state, 'running', 'the restore was finished');
    assert.equal((await h.ok(['exec', 'box', '--', 'cat', '/root/data'])).stdout, 'at-snapshot\n', 'rolled back to the snapshot');
    assert.ok(!existsSync(join(h.home, 'vms', (await vmId()), 'restoring')), 'the intent is done with');
    assert.ok(h.qemuPids().includes(box.pid!));
    // The saves above listened in folders named for this home; none is left.
    assert.deepEqual(readdirSync('/tmp').filter((e) => `/tmp/${e}`.startsWith(homeTmpPrefix(h.home, 'mig'))), []);
  });

  async function vmId(): Promise<string> {
    const list = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as { id: string; name: string }[];
    return list.find((v) => v.name === 'box')!.id;
  }
});
