import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuPercent, parseCpuSeconds, parseSmapsRollup, readProcess, USER_HZ, type ProcessSample } from '../../src/engine/proc-stats.js';
import { VmStats, type VmStatsDeps } from '../../src/engine/vm-stats.js';
import { netDevBytes, tapTraffic } from '../../src/network/traffic.js';
import { sumBlockStats } from '../../src/vmm/qemu/block-stats.js';
import type { VmRecord } from '../../src/domain/vm.js';

// `cell stats`: the /proc and QMP parsers, the CPU arithmetic, and the sampler on test doubles.

/** A /proc/PID/stat line with these utime and stime (fields 14 and 15) and command name. */
const statLine = (utime: number, stime: number, comm = 'qemu-system-x86') =>
  `4242 (${comm}) S 1 4242 4242 0 -1 4194560 2000 0 0 0 ${utime} ${stime} 0 0 20 0 3 0 143479 3133440 390 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n`;

test('parseCpuSeconds adds utime and stime in USER_HZ ticks, counting fields from the last parenthesis', () => {
  assert.equal(USER_HZ, 100);
  assert.equal(parseCpuSeconds(statLine(250, 50)), 3);
  // A process may name itself anything, spaces and parentheses included.
  assert.equal(parseCpuSeconds(statLine(7, 3, 'a b) S 1 2 (c')), 0.1);
  assert.throws(() => parseCpuSeconds('garbage'));
  assert.throws(() => parseCpuSeconds('1 (x) S 1 2'));
});

test('parseSmapsRollup reads Rss and Pss in bytes, and not the Pss_* lines', () => {
  const text = `5621205da000-7ffe7ca51000 ---p 00000000 00:00 0                          [rollup]
Rss:              231424 kB
Pss:              215040 kB
Pss_Dirty:          1160 kB
Pss_Anon:           9116 kB
Shared_Clean:       1408 kB
`;
  assert.deepEqual(parseSmapsRollup(text), { rssBytes: 231424 * 1024, pssBytes: 215040 * 1024 });
  assert.equal(parseSmapsRollup('Rss: 12 kB\nPss_Anon: 3 kB\n'), null, 'no Pss line');
  assert.equal(parseSmapsRollup(''), null);
});

test('cpuPercent: the share of one core over the interval, never negative, 0 for an empty interval', () => {
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 0 }, { cpuSeconds: 10.5, atMs: 1000 }), 50);
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 0 }, { cpuSeconds: 14, atMs: 2000 }), 200, 'two busy cores');
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 0 }, { cpuSeconds: 10.25, atMs: 500 }), 50);
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 0 }, { cpuSeconds: 10, atMs: 1000 }), 0, 'idle');
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 1000 }, { cpuSeconds: 11, atMs: 1000 }), 0, 'no time passed');
  assert.equal(cpuPercent({ cpuSeconds: 10, atMs: 0 }, { cpuSeconds: 2, atMs: 1000 }), 0, 'a new process (restarted VM) between the samples');
});

test('readProcess reads this process: CPU time and memory, and null for a pid that is gone', async () => {
  const me = await readProcess(process.pid);
  assert.ok(me && me.cpuSeconds > 0);
  assert.ok(me.memory && me.memory.rssBytes > 1024 * 1024 && me.memory.pssBytes > 0 && me.memory.pssBytes <= me.memory.rssBytes);
  assert.equal(await readProcess(2 ** 22 + 1), null, 'above pid_max: no such process');
});

test('netDevBytes finds an interface in a /proc/net/dev table; tapTraffic is null without a tap', async () => {
  const table = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  tap0:12345678     100    0    0    0     0          0         0      4096      20    0    0    0     0       0          0
n-1a2b:       1       1    0    0    0     0          0         0        2       1    0    0    0     0       0          0
`;
  assert.deepEqual(netDevBytes(table, 'tap0'), [12345678, 4096]);
  assert.deepEqual(netDevBytes(table, 'n-1a2b'), [1, 2]);
  assert.equal(netDevBytes(table, 'tap'), null, 'whole names only');
  assert.equal(netDevBytes(table, 'eth0'), null);
  // This process's namespace has no tap0; a pid that is gone has no table at all.
  assert.equal(await tapTraffic(process.pid), null);
  assert.equal(await tapTraffic(2 ** 22 + 1), null);
});

test('sumBlockStats adds the top-level drives of query-blockstats and ignores the layers below them', () => {
  const reply = [
    { device: '', qdev: '/machine/peripheral-anon/device[0]/virtio-backend', stats: { rd_bytes: 1000, wr_bytes: 200, rd_operations: 3 }, parent: { stats: { rd_bytes: 999999, wr_bytes: 999999 } } },
    { device: '', qdev: 'data', stats: { rd_bytes: 24, wr_bytes: 56 }, backing: { stats: { rd_bytes: 5, wr_bytes: 5 } } },
  ];
  assert.deepEqual(sumBlockStats(reply), { readBytes: 1024, writeBytes: 256 });
  assert.deepEqual(sumBlockStats([]), { readBytes: 0, writeBytes: 0 });
  assert.deepEqual(sumBlockStats(null), { readBytes: 0, writeBytes: 0 });
  assert.deepEqual(sumBlockStats([{ stats: { rd_bytes: -1, wr_bytes: 'x' } }, {}]), { readBytes: 0, writeBytes: 0 });
});

// The sampler, on test doubles: a VM store, a machine table, a network and a /proc reader.

const MIB = 1024 * 1024;

function vmRecord(state: VmRecord['state'] = 'running'): VmRecord {
  return { id: 'a'.repeat(64), name: 'web', state, spec: { cpus: 2, memoryMib: 256 } } as unknown as VmRecord;
}

interface Doubles {
  deps: VmStatsDeps;
  vm: { record: VmRecord | undefined };
  machine: { pid: number } | undefined;
  cpu: number[];
  clock: { ms: number };
}

function doubles(): Doubles {
  const d: Doubles = {
    vm: { record: vmRecord() },
    machine: { pid: 4242 },
    cpu: [],
    clock: { ms: 0 },
    deps: undefined as unknown as VmStatsDeps,
  };
  d.deps = {
    vms: {
      resolve: (ref) => {
        if (!d.vm.record || ref !== 'web') throw new Error(`no such VM: ${ref}`);
        return d.vm.record;
      },
      get: () => d.vm.record,
    },
    live: {
      get: () => d.machine && { pid: d.machine.pid, control: { diskIo: async () => ({ readBytes: 4 * MIB, writeBytes: MIB }) } },
      ids: () => (d.machine ? [d.vm.record!.id] : []),
    },
    network: { traffic: async () => ({ rxBytes: 100, txBytes: 200 }) },
    // Each reading: the next CPU time in the list, and the clock advanced by a second.
    readProcess: async (): Promise<ProcessSample | null> => {
      const cpuSeconds = d.cpu.shift();
      d.clock.ms += 1000;
      return cpuSeconds === undefined ? null : { cpuSeconds, memory: { rssBytes: 200 * MIB, pssBytes: 150 * MIB } };
    },
    now: () => d.clock.ms,
  };
  return d;
}

test('the sampler: a row per interval with CPU % between readings, memory, disk and network', async () => {
  const d = doubles();
  d.cpu.push(10, 10.02, 11.02, 12.52);
  const stats = new VmStats(d.deps);
  const rows = [];
  for await (const row of stats.stream('web', { intervalMs: 1 })) {
    rows.push(row);
    if (rows.length === 3) break;
  }
  assert.deepEqual(rows.map((r) => r.cpuPercent), [2, 100, 150]);
  assert.deepEqual(rows[0]!.memory, { rssBytes: 200 * MIB, pssBytes: 150 * MIB, guestBytes: 256 * MIB });
  assert.deepEqual(rows[0]!.disk, { readBytes: 4 * MIB, writeBytes: MIB });
  assert.deepEqual(rows[0]!.network, { rxBytes: 100, txBytes: 200 });
  assert.equal(rows[0]!.cpus, 2);
  assert.equal(rows[0]!.state, 'running');
  assert.ok(!Number.isNaN(Date.parse(rows[0]!.time)));
});

test('the sampler: a stopped VM is a row with CPU 0 and no memory, disk or network; one that stops midway too', async () => {
  const d = doubles();
  d.vm.record = vmRecord('stopped');
  d.machine = undefined;
  const stats = new VmStats(d.deps);
  assert.deepEqual(
    { ...(await stats.once('web', { intervalMs: 1 })), time: 'T' },
    { id: 'a'.repeat(64), name: 'web', state: 'stopped', time: 'T', cpus: 2, cpuPercent: 0, memory: null, disk: null, network: null },
  );
  // Running for the first reading, its QEMU gone at the second.
  const e = doubles();
  e.cpu.push(10);
  const row = await new VmStats(e.deps).once('web', { intervalMs: 1 });
  assert.equal(row.cpuPercent, 0);
  assert.equal(row.memory, null);
  assert.equal(row.disk, null);
});

test('the sampler: a counter that cannot be read is null, not 0; user-mode networking gives null network', async () => {
  const d = doubles();
  d.cpu.push(1, 1.5);
  d.deps.live = { get: () => ({ pid: 1, control: { diskIo: () => Promise.reject(new Error('QMP query-blockstats: connection closed')) } }), ids: () => [] };
  d.deps.network = { traffic: async () => null };
  const row = await new VmStats(d.deps).once('web', { intervalMs: 1 });
  assert.equal(row.cpuPercent, 50);
  assert.equal(row.disk, null);
  assert.equal(row.network, null);
  assert.ok(row.memory);
});

test('every running VM: one batch per interval over the same readings; spares (no record) and stopped VMs left out; none: an empty batch at once', async () => {
  const d = doubles();
  d.cpu.push(10, 10.5, 11.5);
  const live = d.deps.live;
  // A spare: a machine without a VM record.
  d.deps.live = { get: live.get, ids: () => [...live.ids(), 'spare'] };
  d.deps.vms = { ...d.deps.vms, get: (id) => (id === 'spare' ? undefined : d.vm.record) };
  const batches = [];
  for await (const rows of new VmStats(d.deps).everyRunning({ intervalMs: 1 })) {
    batches.push(rows.map((r) => [r.name, r.cpuPercent]));
    if (batches.length === 2) break;
  }
  assert.deepEqual(batches, [[['web', 50]], [['web', 100]]], 'the first batch comes after two readings');
  d.machine = undefined;
  for await (const rows of new VmStats(d.deps).everyRunning({ intervalMs: 1 })) {
    assert.deepEqual(rows, []);
    break;
  }
});

test('every running VM: two readers share one sampling loop (one reading per VM per interval), which stops with the last', async () => {
  const d = doubles();
  let readings = 0;
  const read = d.deps.readProcess!;
  d.deps.readProcess = (pid) => {
    readings++;
    return read(pid);
  };
  d.cpu.push(1, 1.5, 2.5, 3, 4, 5, 6, 7);
  const stats = new VmStats(d.deps);
  const take = async (n: number) => {
    const got = [];
    for await (const rows of stats.everyRunning({ intervalMs: 20 })) {
      got.push(rows.length);
      if (got.length === n) break;
    }
    return got;
  };
  const [a, b] = await Promise.all([take(2), take(2)]);
  assert.deepEqual([a, b], [[1, 1], [1, 1]]);
  assert.ok(readings <= 4, `one reading per interval for both readers, not one each: ${readings}`);
  const after = readings;
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(readings - after <= 1, 'the loop stops once nobody reads');
});

test('the sampler: removing the VM ends the stream; an unknown ref fails before any reading', async () => {
  const d = doubles();
  d.cpu.push(1, 2, 3, 4);
  const stats = new VmStats(d.deps);
  const rows = [];
  for await (const row of stats.stream('web', { intervalMs: 1 })) {
    rows.push(row);
    d.vm.record = undefined;
  }
  assert.equal(rows.length, 1);
  await assert.rejects(stats.once('web', { intervalMs: 1 }), /no such VM: web/);
});

test('the sampler: an abort ends the stream at once, its timer cleared, however long the interval', async () => {
  const d = doubles();
  d.cpu.push(1, 2, 3);
  const stats = new VmStats(d.deps);
  const controller = new AbortController();
  const started = Date.now();
  const rows = [];
  setTimeout(() => controller.abort(), 20);
  for await (const row of stats.stream('web', { intervalMs: 60_000, signal: controller.signal })) rows.push(row);
  assert.equal(rows.length, 0);
  assert.ok(Date.now() - started < 5000, 'did not wait out the interval');
  await assert.rejects(stats.once('web', { signal: controller.signal }), (err: Error & { code?: string }) => err.code === 'cancelled');
});
