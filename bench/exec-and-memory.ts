/**
 * In running VMs: exec round trip of `true` through the API and the agent (SDK, and the whole CLI
 * process), p50/p99; an agent PING as the in-process baseline; and host memory per idle VM (QEMU
 * RSS and PSS plus a share of celld's RSS).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellClient } from '../src/sdk/index.js';
import { benchHome, fmt, median, percentile, pssKib, rssKib, runCell } from './lib.js';

const EXECS = Number(process.env.BENCH_EXECS ?? 50);
const IDLE_VMS = Number(process.env.BENCH_IDLE_VMS ?? 3);

async function main(): Promise<void> {
  const h = benchHome();
  const client = await CellClient.connect({ home: h.home });
  const ids: string[] = [];
  try {
    for (let i = 0; i < IDLE_VMS; i++) ids.push((await client.vms.create({ image: 'busybox', name: `idle${i}` })).id);
    const target = ids[0]!;
    const quiet = {};

    const sdk: number[] = [];
    for (let i = 0; i < EXECS; i++) {
      const t = performance.now();
      const r = await client.vms.exec(target, { cmd: ['true'] }, quiet);
      if (r.exitCode !== 0) throw new Error('exec failed');
      sdk.push(performance.now() - t);
    }
    const cli: number[] = [];
    for (let i = 0; i < Math.min(EXECS, 20); i++) {
      const r = await runCell(['exec', target, '--', 'true'], h.env);
      if (r.code !== 0) throw new Error(`cell exec failed: ${r.stderr}`);
      cli.push(r.ms);
    }
    console.log(`exec round trip, SDK -> celld -> agent (n=${sdk.length}): p50 ${sdk.length ? median(sdk).toFixed(1) : '-'} ms, p99 ${percentile(sdk, 99).toFixed(1)} ms`);
    console.log(`cell exec VM -- true, whole CLI process (n=${cli.length}): p50 ${fmt(median(cli))}, p99 ${fmt(percentile(cli, 99))}`);

    await new Promise((r) => setTimeout(r, 2000)); // let the guests settle into idle
    const vms = await client.vms.list({});
    const qemuRss = vms.map((vm) => rssKib(vm.pid!));
    const qemuPss = vms.map((vm) => pssKib(vm.pid!));
    const celldPid = Number(readFileSync(join(h.home, 'celld.pid'), 'utf8'));
    const celldRss = rssKib(celldPid);
    const perVm = median(qemuRss) + celldRss / vms.length;
    console.log(`idle VMs: ${vms.length} x 256 MiB guests`);
    console.log(`QEMU RSS per VM: median ${(median(qemuRss) / 1024).toFixed(1)} MiB (PSS ${(median(qemuPss) / 1024).toFixed(1)} MiB)`);
    console.log(`celld RSS: ${(celldRss / 1024).toFixed(1)} MiB; per idle VM incl. celld share: ${(perVm / 1024).toFixed(1)} MiB`);
  } finally {
    for (const id of ids) await client.vms.remove(id, { force: true }).catch(() => {});
    h.close();
  }
}

await main();
