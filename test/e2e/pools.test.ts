import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { alive, TestHome, waitFor } from '../helpers/cell-home.js';

interface PoolJson {
  size: number;
  warm: boolean;
  ready: number;
  starting: number;
  memoryBytes: number;
  held?: string;
}
interface SnapshotJson {
  id: string;
  name: string;
  pool?: PoolJson;
}
interface InfoJson {
  daemonPid: number;
  pools: { pools: number; ready: number; memoryBytes: number; memoryMaxBytes: number };
}
interface VmJson {
  id: string;
  name: string;
  pid: number | null;
}

// Pools (docs/pools.md): spares a user asked for, exact or warm, refilled in the background.
describe('snapshot pools', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  const inspect = async (name: string) => (JSON.parse((await h.ok(['snapshot', 'inspect', name])).stdout) as SnapshotJson[])[0]!;
  const info = async (env?: NodeJS.ProcessEnv) => JSON.parse((await h.ok(['info', '--format', 'json'], { env })).stdout) as InfoJson;
  /** QEMUs of this home that are no VM's: the spares. */
  const sparePids = async () => {
    const vmPids = new Set((JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[]).map((v) => v.pid));
    return h.qemuPids().filter((p) => !vmPids.has(p));
  };
  const poolReady = (name: string, n: number) => waitFor(async () => (await inspect(name)).pool?.ready === n, 60_000, 200);

  test("warm spares: forks resume them with their own identity, the snapshot's processes stay frozen until then, and the pool refills", async () => {
    await h.ok(['run', '-d', '--name', 'src', 'busybox']);
    // Every 20 ms the guest's workload writes down the hostname it sees: a warm spare's throw-away
    // name must never appear (it warms up with the workload frozen).
    await h.ok(['exec', 'src', '--', 'sh', '-c', '(while true; do hostname >> /tmp/names; sleep 0.02; done) >/dev/null 2>&1 &']);
    await h.ok(['snapshot', '--name', 'base', 'src']);
    await h.ok(['rm', '-f', 'src']);

    const set = await h.ok(['snapshot', 'pool', '--size', '3', '--warm', '--wait', 'base']);
    assert.match(set.stdout, /^base: 3 warm spares \(3 ready, [\d.]+ MiB\)\n$/);
    const pool = (await inspect('base')).pool!;
    assert.equal(pool.ready, 3);
    assert.equal(pool.warm, true);
    assert.ok(pool.memoryBytes > 3 * 2 ** 20, `the pool's memory is counted (${pool.memoryBytes} bytes)`);
    const status = await info();
    assert.deepEqual([status.pools.pools, status.pools.ready], [1, 3]);
    assert.ok(status.pools.memoryMaxBytes > 0);
    assert.match((await h.ok(['snapshots'])).stdout, /base .* 3\/3 warm /);

    const spares = await sparePids();
    assert.equal(spares.length, 3);
    const ids = (await h.ok(['fork', '--count', '2', '--name', 'w', 'base'])).stdout.trim().split('\n');
    const forks = (JSON.parse((await h.ok(['inspect', ...ids])).stdout) as VmJson[]).map((v) => v.pid!);
    assert.ok(forks.every((p) => spares.includes(p)), 'both forks are QEMUs the pool had ready');
    for (const name of ['w-1', 'w-2']) {
      const out = await h.ok(['exec', name, '--', 'sh', '-c', 'hostname; cat /etc/hostname; grep -c cell-spare /tmp/names; a=$(wc -l < /tmp/names); sleep 0.3; b=$(wc -l < /tmp/names); [ $b -gt $a ] && echo running']);
      assert.equal(out.stdout, `${name}\n${name}\n0\nrunning\n`, `${name}: its name from the first command on, its processes running again`);
    }
    assert.ok(await poolReady('base', 3), 'the pool refilled in the background');

    // Exact spares instead: the warm ones go, exact ones come.
    await h.ok(['snapshot', 'pool', '--size', '1', '--wait', 'base']);
    const exact = (await inspect('base')).pool!;
    assert.deepEqual([exact.size, exact.warm, exact.ready], [1, false, 1]);
    assert.ok(spares.filter((p) => !forks.includes(p)).every((p) => !alive(p)), 'the warm spares left over were ended');
    const [exactFork] = (await h.ok(['fork', '--name', 'e', 'base'])).stdout.trim().split('\n');
    assert.equal((await h.ok(['exec', exactFork!, '--', 'hostname'])).stdout, 'e-1\n');
    await h.ok(['rm', '-f', 'w-1', 'w-2', 'e-1']);
  });

  test('the setting outlives celld, the memory cap holds a pool back, and removing the snapshot ends its spares', async () => {
    assert.ok(await poolReady('base', 1));
    const [spare] = await sparePids();
    const daemon = (await info()).daemonPid;
    process.kill(daemon, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(daemon), 10_000));
    assert.ok(!alive(spare!), 'spares end with celld');

    // A new celld with a cap of one byte: one spare is made (nothing to judge by yet), the next is held back.
    const capped = { CELL_POOL_MEMORY_MAX_BYTES: '1' };
    assert.equal((await info(capped)).pools.memoryMaxBytes, 1);
    assert.ok(await poolReady('base', 1), 'the new celld refilled the pool it found in the database');
    const wait = await h.cell(['snapshot', 'pool', '--size', '2', '--wait', 'base'], { env: capped });
    assert.equal(wait.code, 1);
    assert.match(wait.stderr, /^error: pool of base stopped at 1\/2: pool memory is at its cap \(1 B: poolMemoryMaxBytes in config\.json\)\n$/);
    assert.match((await inspect('base')).pool!.held ?? '', /at its cap/);

    const left = await sparePids();
    assert.equal(left.length, 1);
    await h.ok(['snapshot', 'rm', 'base']);
    assert.ok(!alive(left[0]!), 'its spares went with the snapshot');
    assert.equal((await info()).pools.pools, 0);
    assert.deepEqual(h.qemuPids(), []);
  });

  test('bad pool requests are refused with a clear error and change nothing', async () => {
    const tooBig = await h.cell(['snapshot', 'pool', '--size', '65', 'nothing']);
    assert.equal(tooBig.code, 1);
    assert.match(tooBig.stderr, /^error: invalid request: body\/size must be <= 64\n$/);
    const missing = await h.cell(['snapshot', 'pool', '--size', '2', 'nothing']);
    assert.equal(missing.stderr, 'error: no such snapshot: nothing\n');
    const noSize = await h.cell(['snapshot', 'pool', 'nothing']);
    assert.match(noSize.stderr, /--size/);
  });
});
