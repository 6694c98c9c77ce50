/**
 * Snapshot storage where the file system has reflinks (a loop-mounted XFS here, the host's ext4
 * has none) against whole RAM files (the same build on ext4), in one script:
 * - disk used by the snapshots of a 10-step build of small steps, and the build's time (ratios);
 * - fork time from a snapshot whose RAM is a clone of its parent's against the same snapshot stored
 *   whole (exported and imported on the same XFS), `cell run --rm --from SNAP -- true`, no spares,
 *   interleaved, medians (target <= 1.10).
 * Run: node --import tsx bench/snapshot-storage.ts   (BENCH_RUNS=7; needs root and xfsprogs)
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cellPaths } from '../src/domain/paths.js';
import { mountReflinkFs } from '../test/helpers/reflink-fs.js';
import { benchHome, fmt, median, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const STEPS = 10;

async function ok(args: string[], env: NodeJS.ProcessEnv): Promise<{ ms: number; stdout: string }> {
  const r = await runCell(args, env);
  if (r.code !== 0) throw new Error(`cell ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function buildIn(env: NodeJS.ProcessEnv, home: string): Promise<{ ms: number; usedBytes: number; memoryBytes: number[] }> {
  const steps = Array.from({ length: STEPS }, (_, i) => `[[step]]\nrun = "echo ${i + 1} >> /tmp/steps"\n`).join('\n');
  writeFileSync(join(home, 'build.toml'), `base = "busybox"\n\n${steps}`);
  const { ms } = await ok(['build', '-f', join(home, 'build.toml'), '-t', 'result'], env);
  const df = JSON.parse((await ok(['system', 'df', '--format', 'json'], env)).stdout) as { snapshots: { usedBytes: number } };
  const snaps = JSON.parse((await ok(['snapshots', '--format', 'json'], env)).stdout) as { memoryBytes: number }[];
  return { ms, usedBytes: df.snapshots.usedBytes, memoryBytes: snaps.map((s) => s.memoryBytes) };
}

function stopCelld(home: string): void {
  try {
    process.kill(Number(readFileSync(join(home, 'celld.pid'), 'utf8')), 'SIGTERM');
  } catch {
    /* not running */
  }
  rmSync(cellPaths(home, {}).memory, { recursive: true, force: true });
}

async function main(): Promise<void> {
  const fs = mountReflinkFs(8192);
  const ext4 = benchHome();
  const xfsHome = join(fs.dir, 'h');
  const copyHome = join(fs.dir, 'c');
  for (const home of [xfsHome, copyHome]) mkdirSync(home, { mode: 0o700 });
  const base = { CELL_NETWORK: 'off', CELL_SPARES: '0' };
  const ext4Env = { ...ext4.env, ...base };
  const xfsEnv = { ...ext4.env, ...base, CELL_HOME: xfsHome };
  const copyEnv = { ...ext4.env, ...base, CELL_HOME: copyHome };
  try {
    await ok(['setup'], ext4Env);
    const whole = await buildIn(ext4Env, ext4.home);
    // The same build on the same XFS with every RAM file whole: what the file system costs, apart from the clones.
    // (celld reads CELL_RAM_CLONES when it starts: this home's keeps it for the import below, which clones nothing anyway.)
    const plain = await buildIn({ ...copyEnv, CELL_RAM_CLONES: '0' }, copyHome);
    const shared = await buildIn(xfsEnv, xfsHome);

    // The same RAM stored whole on the same XFS (another home): an archive's import writes every page.
    const archive = join(fs.dir, 'result.cellsnap');
    await ok(['snapshot', 'export', 'result', archive], xfsEnv);
    await ok(['snapshot', 'import', '--name', 'whole', archive], copyEnv);
    rmSync(archive);
    const forks = { cloned: [] as number[], whole: [] as number[] };
    const first = { cloned: 0, whole: 0 };
    for (let i = 0; i < RUNS + 1; i++) {
      for (const which of (i % 2 ? ['whole', 'cloned'] : ['cloned', 'whole']) as ('cloned' | 'whole')[]) {
        const { ms } = await ok(['run', '--rm', '--from', which === 'cloned' ? 'result' : 'whole', '--', 'true'], which === 'cloned' ? xfsEnv : copyEnv);
        // The first fork of each reads its RAM file from disk; the rest from the page cache.
        if (i === 0) first[which] = ms;
        else forks[which].push(ms);
      }
    }

    console.log(`snapshot storage: a ${STEPS}-step build of small steps (busybox, 256 MiB guests), TCG, 2 cores`);
    console.log(
      `  disk used by its snapshots: XFS (RAM cloned from the parent's) ${mib(shared.usedBytes)} vs ext4 (whole RAM files) ${mib(whole.usedBytes)}: ratio ${(shared.usedBytes / whole.usedBytes).toFixed(2)}`,
    );
    console.log(`  RAM added per step (median): ${mib(median(shared.memoryBytes))} vs ${mib(median(whole.memoryBytes))} stored whole`);
    console.log(`  build time: ${fmt(shared.ms)} vs ${fmt(whole.ms)} on ext4: ratio ${(shared.ms / whole.ms).toFixed(2)}; vs ${fmt(plain.ms)} on XFS with whole RAM files (${mib(plain.usedBytes)}): ratio ${(shared.ms / plain.ms).toFixed(2)}`);
    const ratio = median(forks.cloned) / median(forks.whole);
    console.log(
      `  run --rm --from SNAP -- true, ${RUNS} interleaved (medians): cloned RAM ${fmt(median(forks.cloned))} vs whole ${fmt(median(forks.whole))}: ratio ${ratio.toFixed(2)} (target <= 1.10); first fork ${fmt(first.cloned)} vs ${fmt(first.whole)}`,
    );
  } finally {
    for (const home of [xfsHome, copyHome]) stopCelld(home);
    ext4.close();
    // celld ends its VMs and leaves the mount before it is taken down.
    await new Promise((r) => setTimeout(r, 1000));
    fs.dispose();
  }
}

await main();
