/**
 * Many forks on one host: for each fleet size (default 1, 10, 50, 100) fork that many VMs of one
 * snapshot (through the SDK, 10 per request), then with all of them running measure
 * - the time per fork (the whole fleet's fork time / its size; it should stay flat),
 * - host memory per idle fork (PSS of the fleet's QEMUs, summed, / size, after 3 s idle),
 * - exec round trip of `true` in one fork, p50 and p99 of 30,
 * - celld's RSS and its CPU use over the exec phase,
 * and remove the fleet before the next size. Ratios against the size-1 row.
 * Run: node --import tsx bench/fleet.ts   (BENCH_FLEET_SIZES=1,10,50,100)
 */
import { readFileSync } from 'node:fs';
import { CellClient } from '../src/sdk/index.js';
import { benchHome, median, percentile, pssKib, qemuPidsOf, rssKib, runCell } from './lib.js';

const SIZES = (process.env.BENCH_FLEET_SIZES ?? '1,10,50,100').split(',').map(Number);
const BATCH = 10;

/** utime + stime of a process, in clock ticks (100 per second here). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

interface Row {
  size: number;
  msPerFork: number;
  pssMibPerFork: number;
  execP50: number;
  celldIdleCpuPct: number;
  execP99: number;
  celldRssMib: number;
  celldCpuPct: number;
}

async function main(): Promise<void> {
  const bench = benchHome();
  const rows: Row[] = [];
  let client: CellClient | undefined;
  try {
    const boot = await runCell(['run', '-d', '--name', 'origin', 'busybox'], { ...bench.env, CELL_NETWORK: 'off' });
    if (boot.code !== 0) throw new Error(boot.stderr);
    const snap = await runCell(['snapshot', '--name', 'fleet', '--stop', 'origin'], bench.env);
    if (snap.code !== 0) throw new Error(snap.stderr);
    client = await CellClient.connect({ home: bench.home });
    const celld = Number(readFileSync(`${bench.home}/celld.pid`, 'utf8'));
    for (const size of SIZES) {
      const ids: string[] = [];
      const started = performance.now();
      while (ids.length < size) {
        const vms = await client.snapshots.fork('fleet', { count: Math.min(BATCH, size - ids.length), timeoutMs: 600_000 });
        ids.push(...vms.map((vm) => vm.id));
      }
      const msPerFork = (performance.now() - started) / size;
      const idleTicks = cpuTicks(celld);
      await new Promise((r) => setTimeout(r, 3000));
      const celldIdleCpuPct = (cpuTicks(celld) - idleTicks) / 3;
      const pss = qemuPidsOf(bench.home).reduce((sum, pid) => sum + pssKib(pid), 0) / 1024;
      const ticks = cpuTicks(celld);
      const execStarted = performance.now();
      const times: number[] = [];
      for (let i = 0; i < 30; i++) {
        const t = performance.now();
        await client.vms.exec(ids[0]!, { cmd: ['true'] });
        times.push(performance.now() - t);
      }
      const cpuPct = ((cpuTicks(celld) - ticks) / 100 / ((performance.now() - execStarted) / 1000)) * 100;
      rows.push({ size, msPerFork, pssMibPerFork: pss / size, execP50: median(times), execP99: percentile(times, 99), celldRssMib: rssKib(celld) / 1024, celldCpuPct: cpuPct, celldIdleCpuPct });
      for (const id of ids) await client.vms.remove(id, { force: true });
      console.error(`size ${size} done`);
    }
  } finally {
    client?.close();
    // Whatever is left (a failed round): QEMUs outlive celld, so they go first.
    const left = await runCell(['ps', '-a', '-q'], bench.env);
    const ids = left.stdout.split('\n').filter(Boolean);
    if (ids.length) await runCell(['rm', '-f', ...ids], bench.env);
    bench.close();
  }
  const base = rows[0]!;
  console.log(`fleet of forks of one busybox snapshot (256 MiB guests), SDK, ${BATCH} forks per request`);
  console.log('  size  ms/fork (ratio)   PSS MiB/fork   exec p50 ms (ratio)   exec p99 ms   celld RSS MiB   celld CPU % (idle, exec phase)');
  for (const r of rows) {
    console.log(
      `  ${String(r.size).padStart(4)}  ${r.msPerFork.toFixed(0).padStart(7)} (${(r.msPerFork / base.msPerFork).toFixed(2)})   ${r.pssMibPerFork.toFixed(1).padStart(12)}   ${r.execP50.toFixed(1).padStart(11)} (${(r.execP50 / base.execP50).toFixed(2)})   ${r.execP99.toFixed(1).padStart(11)}   ${r.celldRssMib.toFixed(0).padStart(13)}   ${r.celldIdleCpuPct.toFixed(1).padStart(8)}, ${r.celldCpuPct.toFixed(1)}`,
    );
  }
}

await main();
