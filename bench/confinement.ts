/**
 * What confinement (-sandbox, -runas, a cgroup per QEMU; CELL_CONFINE=0 turns it off) costs:
 * two CELL_HOMEs, one celld confined and one not, measured interleaved in the same minutes:
 * - cold `cell run --rm busybox -- true` (CLI process to exit);
 * - `cell run --rm --from SNAPSHOT -- true` (fork + command, CLI process to exit);
 * - fork to first exec result through the SDK (as bench/snapshot-fork.ts).
 */
import { readFileSync } from 'node:fs';
import { CellClient } from '../src/sdk/index.js';
import { benchHome, fmt, median, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const CMD = ['sh', '-c', 'echo ok'];

interface Side {
  label: string;
  h: ReturnType<typeof benchHome>;
  client?: CellClient;
  cold: number[];
  fork: number[];
  first: number[];
}

async function prepare(side: Side): Promise<void> {
  const started = await runCell(['info'], side.h.env); // celld starts with this side's environment
  if (started.code !== 0) throw new Error(started.stderr);
  side.client = await CellClient.connect({ home: side.h.home });
  const source = await side.client.vms.create({ image: 'busybox', name: 'source' });
  await side.client.vms.exec(source.id, { cmd: ['sh', '-c', '(while true; do sleep 1; done) >/dev/null 2>&1 &'] });
  await side.client.snapshots.take(source.id, { name: 'warm' });
  const warm = await runCell(['run', '--rm', '--from', 'warm', '--', 'true'], side.h.env); // first fork: a spare from now on
  if (warm.code !== 0) throw new Error(warm.stderr);
}

async function round(side: Side, i: number): Promise<void> {
  const c = await runCell(['run', '--rm', 'busybox', '--', ...CMD], side.h.env);
  const f = await runCell(['run', '--rm', '--from', 'warm', '--', ...CMD], side.h.env);
  if (c.code !== 0 || f.code !== 0) throw new Error(`${side.label}: ${c.stderr} ${f.stderr}`);
  side.cold.push(c.ms);
  side.fork.push(f.ms);
  const t = performance.now();
  const [vm] = await side.client!.snapshots.fork('warm', { name: `probe${i}` });
  let first = 0;
  await side.client!.vms.exec(vm!.id, { cmd: CMD }, { onStdout: () => void (first ||= performance.now() - t) });
  side.first.push(first);
  await side.client!.vms.remove(vm!.id, { force: true });
}

/** The peak memory of a running QEMU's cgroup (v1 max_usage, v2 memory.peak), when it has one. */
function cgroupPeak(pid: number): string {
  const m = /:(?:memory)?:\/cellvm\/([^\n]+)$/m.exec(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  if (!m) return 'no cgroup';
  for (const f of [`/sys/fs/cgroup/memory/cellvm/${m[1]}/memory.max_usage_in_bytes`, `/sys/fs/cgroup/cellvm/${m[1]}/memory.peak`]) {
    try {
      return `${(Number(readFileSync(f, 'utf8')) / 2 ** 20).toFixed(0)} MiB`;
    } catch {
      /* the other version */
    }
  }
  return 'unknown';
}

async function main(): Promise<void> {
  const on: Side = { label: 'confined', h: benchHome(), cold: [], fork: [], first: [] };
  const off: Side = { label: 'CELL_CONFINE=0', h: benchHome(), cold: [], fork: [], first: [] };
  off.h.env.CELL_CONFINE = '0';
  try {
    await prepare(on);
    await prepare(off);
    for (let i = 0; i < RUNS; i++) {
      // Alternate who goes first, so neither always runs on a host the other just warmed.
      for (const side of i % 2 ? [off, on] : [on, off]) await round(side, i);
    }
    const [source] = await on.client!.vms.list({});
    console.log(`runs: ${RUNS} each, interleaved; peak memory of the confined source VM's cgroup: ${cgroupPeak(source!.pid!)}`);
    for (const s of [on, off]) {
      console.log(
        `${s.label.padEnd(15)} cold run median ${fmt(median(s.cold))} [${s.cold.map(fmt).join(', ')}]; ` +
          `run --from median ${fmt(median(s.fork))} [${s.fork.map(fmt).join(', ')}]; ` +
          `fork to first exec median ${fmt(median(s.first))} [${s.first.map(fmt).join(', ')}]`,
      );
    }
  } finally {
    for (const s of [on, off]) {
      const vms = await s.client?.vms.list({ all: true }).catch(() => []);
      for (const v of vms ?? []) await s.client!.vms.remove(v.id, { force: true }).catch(() => {});
      s.client?.close();
      s.h.close();
    }
  }
}

await main();
