/**
 * Moving snapshots between hosts (issue 15): `snapshot push` + `pull` through a registry (CNCF
 * Distribution on loopback) against `snapshot export` + copy + `import`, for a 256 MiB guest's
 * snapshot and for a child taken after the guest wrote ~2.5 MiB (about 1% of its RAM). Interleaved
 * rounds, each into a fresh repository and a home that has neither; medians; time and bytes moved.
 * Run: node --import tsx bench/snapshot-registry.ts   (BENCH_RUNS=3)
 */
import { copyFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { registryBlobPath, startRegistry } from '../test/image/registry-harness.js';
import { benchHome, fmt, median, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const MiB = 1024 * 1024;

async function ok(args: string[], env: NodeJS.ProcessEnv): Promise<{ ms: number; stdout: string }> {
  const r = await runCell(args, env);
  if (r.code !== 0) throw new Error(`cell ${args.join(' ')}: ${r.stderr}`);
  return r;
}

async function main(): Promise<void> {
  const registry = await startRegistry();
  const source = benchHome();
  const target = benchHome();
  const blobs = () => {
    const dir = join(registry.storage, 'docker', 'registry', 'v2', 'blobs', 'sha256');
    try {
      return new Set(readdirSync(dir).flatMap((p) => readdirSync(join(dir, p))));
    } catch {
      return new Set<string>();
    }
  };
  const added = (before: Set<string>) => [...blobs()].filter((h) => !before.has(h)).reduce((n, h) => n + statSync(registryBlobPath(registry.storage, `sha256:${h}`)).size, 0);
  const rows = { push: { base: [] as number[], child: [] as number[] }, pull: { base: [] as number[], child: [] as number[] }, exportImport: { base: [] as number[], child: [] as number[] } };
  const bytes = { registry: { base: 0, child: 0 }, archive: { base: 0, child: 0 } };
  try {
    const env = { ...source.env, CELL_NETWORK: 'off' };
    const vm = (await ok(['run', '-d', '--memory', '256', 'busybox', '--', 'sleep', '100000'], env)).stdout.trim();
    await ok(['snapshot', '--name', 'base', vm], env);
    await ok(['exec', vm, '--', 'dd', 'if=/dev/urandom', 'of=/tmp/one-percent', 'bs=256k', 'count=10'], env);
    await ok(['snapshot', '--name', 'child', vm], env);
    await ok(['rm', '-f', vm], env);
    const targetEnv = { ...target.env, CELL_NETWORK: 'off' };
    for (let i = 0; i < RUNS; i++) {
      const repo = `${registry.host}/bench/round${i}`;
      for (const which of ['base', 'child'] as const) {
        const before = blobs();
        rows.push[which].push((await ok(['snapshot', 'push', which, `${repo}:${which}`], env)).ms);
        // Distribution stores a blob once for all repositories: only the first round adds bytes.
        if (i === 0) bytes.registry[which] = added(before);
      }
      for (const which of ['base', 'child'] as const) rows.pull[which].push((await ok(['snapshot', 'pull', `${repo}:${which}`], targetEnv)).ms);
      await ok(['snapshot', 'rm', 'child', 'base'], targetEnv);

      for (const which of ['base', 'child'] as const) {
        const file = join(source.home, `${which}.cellsnap`);
        const copy = join(target.home, `${which}.cellsnap`);
        const started = performance.now();
        await ok(['snapshot', 'export', which, file], env);
        copyFileSync(file, copy);
        await ok(['snapshot', 'import', copy], targetEnv);
        rows.exportImport[which].push(performance.now() - started);
        bytes.archive[which] = statSync(file).size; // tar --sparse: the RAM's holes are not in it
        rmSync(file);
        rmSync(copy);
      }
      await ok(['snapshot', 'rm', 'child', 'base'], targetEnv);
    }
  } finally {
    source.close();
    target.close();
    await registry.stop();
  }
  console.log(`snapshot of a 256 MiB busybox guest and a child that wrote 2.5 MiB, ${RUNS} rounds (medians)`);
  for (const which of ['base', 'child'] as const) {
    const viaRegistry = median(rows.push[which]) + median(rows.pull[which]);
    const viaArchive = median(rows.exportImport[which]);
    console.log(
      `  ${which.padEnd(5)}  push ${fmt(median(rows.push[which]))} + pull ${fmt(median(rows.pull[which]))} = ${fmt(viaRegistry)} vs export + copy + import ${fmt(viaArchive)}: ratio ${(viaRegistry / viaArchive).toFixed(2)}; ` +
        `new at the registry ${(bytes.registry[which] / MiB).toFixed(1)} MiB vs archive ${(bytes.archive[which] / MiB).toFixed(1)} MiB: ratio ${(bytes.registry[which] / bytes.archive[which]).toFixed(2)}`,
    );
  }
}

await main();
