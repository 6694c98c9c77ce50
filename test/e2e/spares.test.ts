import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { alive, TestHome, waitFor } from '../helpers/cell-home.js';

interface InfoJson {
  spares: number;
  daemonPid: number;
}
interface VmJson {
  id: string;
  pid: number | null;
}

// Spares: a fork of a snapshot leaves a restored, paused QEMU ready for the next fork.
describe('spare forks', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  const info = async () => JSON.parse((await h.ok(['info', '--format', 'json'])).stdout) as InfoJson;
  const spareReady = () => waitFor(async () => (await info()).spares === 1, 20_000, 100);
  /** The running VMs, and the one QEMU of this home that is none of theirs: the spare. */
  const spareAndVms = async () => {
    const vms = JSON.parse((await h.ok(['ps', '--format', 'json'])).stdout) as VmJson[];
    const vmPids = new Set(vms.map((v) => v.pid));
    return { vms, spare: h.qemuPids().find((p) => !vmPids.has(p))! };
  };

  test('the next fork resumes the spare: a full fork with its own identity', async () => {
    await h.ok(['run', '-d', '--name', 'src', 'busybox']);
    await h.ok(['exec', 'src', '--', 'sh', '-c', 'echo kept > /root/file; (i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done) >/dev/null 2>&1 &']);
    await h.ok(['snapshot', '--name', 'warm', 'src']);
    assert.equal((await info()).spares, 0, 'no spare before anyone forks');
    await h.ok(['fork', '--name', 'first', 'warm']);
    assert.ok(await spareReady(), 'a spare was prepared after the fork');
    const before = new Set(h.qemuPids());
    const [id] = (await h.ok(['fork', '--name', 'second', 'warm'])).stdout.trim().split('\n');
    const [vm] = JSON.parse((await h.ok(['inspect', id!])).stdout) as VmJson[];
    assert.ok(vm?.pid && before.has(vm.pid), 'the fork is the QEMU that was waiting');
    const out = await h.ok(['exec', 'second-1', '--', 'sh', '-c', 'cat /root/file; hostname; a=$(cat /tmp/n); sleep 0.4; b=$(cat /tmp/n); [ $b -gt $a ] && echo counting']);
    assert.equal(out.stdout, 'kept\nsecond-1\ncounting\n');
    const first = await h.ok(['exec', 'first-1', '--', 'hostname']);
    assert.equal(first.stdout, 'first-1\n');
  });

  test('removing the snapshot ends its spare; so does stopping celld', async () => {
    assert.ok(await spareReady());
    const { vms: onWarm, spare: warmSpare } = await spareAndVms();
    await h.ok(['snapshot', 'rm', '-f', 'warm']);
    assert.equal((await info()).spares, 0);
    assert.ok(!alive(warmSpare), 'the spare went with its snapshot');
    assert.deepEqual(h.qemuPids().sort(), onWarm.map((v) => v.pid).sort(), 'the VMs on it keep running (rm -f never removes a VM)');
    await h.ok(['rm', '-f', 'src', 'first-1', 'second-1']);

    await h.ok(['run', '-d', '--name', 'src2', 'busybox']);
    await h.ok(['snapshot', '--name', 'warm2', 'src2']);
    await h.ok(['fork', 'warm2']);
    assert.ok(await spareReady());
    const { vms, spare } = await spareAndVms();
    const daemon = (await info()).daemonPid;
    process.kill(daemon, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(daemon), 10_000));
    assert.ok(!alive(spare), 'celld ended its spare on the way out');
    assert.equal(h.qemuPids().length, vms.length, 'the VMs themselves keep running');
  });

  test('a spare left by a celld that was killed is ended by the next one', async () => {
    await h.ok(['fork', 'warm2']);
    assert.ok(await spareReady());
    const { vms, spare } = await spareAndVms();
    const daemon = (await info()).daemonPid;
    process.kill(daemon, 'SIGKILL');
    assert.ok(await waitFor(() => !alive(daemon), 10_000));
    assert.ok(alive(spare), 'an orphan after a crash');
    await h.ok(['ps']); // a new celld starts on demand and sweeps
    assert.ok(await waitFor(() => !alive(spare), 10_000), 'the new celld ended the orphan');
    assert.equal(JSON.parse((await h.ok(['ps', '--format', 'json'])).stdout).length, vms.length, 'and kept the VMs');
  });
});
