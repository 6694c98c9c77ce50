/**
 * Volume I/O: in one VM with a named volume at /vol, a host folder at /share (virtio-fs) and its
 * root disk at /root, and on the host directly, interleaved rounds of:
 * - sequential write of 32 MiB (the busybox root disk has 58 MiB free) (dd, conv=fsync) and read back (caches dropped in the guest first),
 * - creating 500 small files (with a sync at the end).
 * Prints each as MiB/s or files/s, and the ratios volume / root disk, volume / host, host folder / root disk and host folder / host.
 * Run: node --import tsx bench/volumes.ts (also part of npm run bench)
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { benchHome, median, runCell } from './lib.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MIB = 32;

/** One round of the three measures, in the directory `dir`, by a shell that prints three numbers of seconds. */
const SCRIPT = (dir: string) => `
set -e
# GNU date has nanoseconds; busybox's prints %N, so /proc/uptime's centiseconds there.
t() { d=$(date +%s.%N); case $d in *N) cut -d' ' -f1 /proc/uptime;; *) echo $d;; esac; }
a=$(t); dd if=/dev/zero of=${dir}/big bs=1M count=${MIB} conv=fsync 2>/dev/null; b=$(t)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
c=$(t); dd if=${dir}/big of=/dev/null bs=1M 2>/dev/null; d=$(t)
mkdir -p ${dir}/small; e=$(t); i=0; while [ $i -lt 500 ]; do echo $i > ${dir}/small/f$i; i=$((i+1)); done; sync; f=$(t)
rm -rf ${dir}/big ${dir}/small
awk "BEGIN{print $b-$a, $d-$c, $f-$e}"
`;

function parse(out: string): [number, number, number] {
  const [w, r, s] = out.trim().split(/\s+/).slice(-3).map(Number);
  return [MIB / w!, MIB / r!, 500 / s!];
}

async function main(): Promise<void> {
  const bench = benchHome();
  const hostDir = mkdtempSync('/var/tmp/cellb-vol-');
  const sharedDir = mkdtempSync('/var/tmp/cellb-share-');
  try {
    const boot = await runCell(['run', '-d', '--name', 'vb', '-v', 'benchvol:/vol', '-v', `${sharedDir}:/share`, 'busybox'], bench.env);
    if (boot.code !== 0) throw new Error(boot.stderr);
    const results = { volume: [] as [number, number, number][], share: [] as [number, number, number][], root: [] as [number, number, number][], host: [] as [number, number, number][] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const [where, dir] of [['volume', '/vol'], ['share', '/share'], ['root', '/root']] as const) {
        const r = await runCell(['exec', 'vb', '--', 'sh', '-c', SCRIPT(dir)], bench.env);
        if (r.code !== 0) throw new Error(`${where}: ${r.stderr}`);
        results[where].push(parse(r.stdout));
      }
      results.host.push(parse(execFileSync('sh', ['-c', SCRIPT(hostDir)], { encoding: 'utf8' })));
    }
    const med = (rows: [number, number, number][], i: number) => median(rows.map((row) => row[i]!));
    const names = ['sequential write MiB/s', 'sequential read MiB/s', 'small files/s'];
    console.log(`volume and host-folder I/O, medians of ${ROUNDS} interleaved rounds (${MIB} MiB, 500 files)`);
    for (let i = 0; i < 3; i++) {
      const [v, f, r, h] = [med(results.volume, i), med(results.share, i), med(results.root, i), med(results.host, i)];
      console.log(
        `  ${names[i]!.padEnd(24)} volume ${v.toFixed(1).padStart(8)}  host folder ${f.toFixed(1).padStart(8)}  root disk ${r.toFixed(1).padStart(8)}  host ${h.toFixed(1).padStart(8)}` +
          `  volume/root ${(v / r).toFixed(2)}  volume/host ${(v / h).toFixed(3)}  folder/root ${(f / r).toFixed(2)}  folder/host ${(f / h).toFixed(3)}`,
      );
    }
  } finally {
    await runCell(['rm', '-f', 'vb'], bench.env);
    bench.close();
    rmSync(hostDir, { recursive: true, force: true });
    rmSync(sharedDir, { recursive: true, force: true });
  }
}

await main();
