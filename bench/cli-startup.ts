/**
 * How long `cell` itself takes, against Node's own start-up: interleaved rounds of `node -e 0`,
 * `cell --version`, `cell ps` (one request to celld) and `cell exec VM -- true` (a VM booted
 * first), each a fresh process timed from spawn to exit. Prints each one's median and p90, and
 * its median minus node's (the target: at most +30 ms).
 * Run: node --import tsx bench/cli-startup.ts [ROUNDS]   (BENCH_ROUNDS also works; default 21)
 */
import { spawnSync } from 'node:child_process';
import { benchHome, CELL_BIN, median, percentile, runCell } from './lib.js';

const ROUNDS = Number(process.argv[2] ?? process.env.BENCH_ROUNDS ?? 21);

function timeOnce(cmd: string, args: string[], env: NodeJS.ProcessEnv): number {
  const started = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return ms;
}

async function main(): Promise<void> {
  const bench = benchHome();
  try {
    const boot = await runCell(['run', '-d', '--name', 'cli', 'busybox'], bench.env);
    if (boot.code !== 0) throw new Error(boot.stderr);
    const cases: [string, string, string[]][] = [
      ['node -e 0', process.execPath, ['-e', '0']],
      ['cell --version', CELL_BIN, ['--version']],
      ['cell ps', CELL_BIN, ['ps']],
      ['cell exec VM -- true', CELL_BIN, ['exec', 'cli', '--', 'true']],
    ];
    const times = new Map(cases.map(([name]) => [name, [] as number[]]));
    for (const [, cmd, args] of cases) timeOnce(cmd, args, bench.env); // warm the page cache
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, cmd, args] of cases) times.get(name)!.push(timeOnce(cmd, args, bench.env));
    }
    const base = median(times.get('node -e 0')!);
    console.log(`cell start-up, ${ROUNDS} interleaved rounds, ms (spawn to exit)`);
    for (const [name] of cases) {
      const xs = times.get(name)!;
      const m = median(xs);
      console.log(`  ${name.padEnd(22)} median ${m.toFixed(1).padStart(6)}  p90 ${percentile(xs, 90).toFixed(1).padStart(6)}  minus node ${(m - base).toFixed(1).padStart(6)}  ratio ${(m / base).toFixed(2)}`);
    }
  } finally {
    await runCell(['rm', '-f', 'cli'], bench.env);
    bench.close();
  }
}

await main();
