/**
 * Snapshots and forks, in one script with the same image and command:
 * - cold `cell run --rm busybox -- CMD` against `cell run --rm --from SNAPSHOT -- CMD` (CLI process
 *   to the command's exit), interleaved, medians; target fork >= 20x faster on TCG;
 * - fork to first exec result through the SDK (target <= 100 ms);
 * - snapshot time of a 256 MiB guest;
 * - 10 forks of one snapshot at once (total and per fork);
 * - host PSS of 10 idle forks against 10 cold-booted VMs of the same image (target <= 0.3).
 */
import { CellClient } from '../src/sdk/index.js';
import { benchHome, fmt, median, pssKib, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const FLEET = Number(process.env.BENCH_FLEET ?? 10);
const CMD = ['sh', '-c', 'echo ok'];

async function fleetPss(client: CellClient, ids: string[]): Promise<number> {
  await new Promise((r) => setTimeout(r, 3000)); // settle: guests idle, page cache warm
  const vms = await Promise.all(ids.map((id) => client.vms.get(id)));
  return vms.reduce((sum, vm) => sum + pssKib(vm.pid!), 0);
}

async function main(): Promise<void> {
  const h = benchHome();
  const client = await CellClient.connect({ home: h.home });
  try {
    await client.setup({});
    // A warm source: a process running inside, as a REPL or server would be.
    const source = await client.vms.create({ image: 'busybox', name: 'source' });
    await client.vms.exec(source.id, { cmd: ['sh', '-c', '(while true; do sleep 1; done) >/dev/null 2>&1 &'] });
    const snapTimes: number[] = [];
    let snapshot = '';
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      const s = await client.snapshots.take(source.id, { name: `warm${i}` });
      snapTimes.push(performance.now() - t);
      snapshot = s.name;
    }
    const snapInfo = await client.snapshots.get(snapshot);

    const cold: number[] = [];
    const forked: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const c = await runCell(['run', '--rm', 'busybox', '--', ...CMD], h.env);
      const f = await runCell(['run', '--rm', '--from', snapshot, '--', ...CMD], h.env);
      if (c.code !== 0 || f.code !== 0) throw new Error(`run failed: ${c.stderr} ${f.stderr}`);
      cold.push(c.ms);
      forked.push(f.ms);
    }

    const firstResult: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t = performance.now();
      const [vm] = await client.snapshots.fork(snapshot, { name: `probe${i}` });
      let first = 0;
      await client.vms.exec(vm!.id, { cmd: CMD }, { onStdout: () => void (first ||= performance.now() - t) });
      firstResult.push(first);
      await client.vms.remove(vm!.id, { force: true });
    }

    const t10 = performance.now();
    const forks = await client.snapshots.fork(snapshot, { count: FLEET, name: 'fleet' });
    const fleetMs = performance.now() - t10;
    const forkPss = await fleetPss(client, forks.map((v) => v.id));
    for (const v of forks) await client.vms.remove(v.id, { force: true });

    const coldIds: string[] = [];
    for (let i = 0; i < FLEET; i++) coldIds.push((await client.vms.create({ image: 'busybox', name: `cold${i}` })).id);
    await Promise.all(coldIds.map((id) => client.vms.exec(id, { cmd: ['sh', '-c', '(while true; do sleep 1; done) >/dev/null 2>&1 &'] })));
    const coldPss = await fleetPss(client, coldIds);
    for (const id of coldIds) await client.vms.remove(id, { force: true });

    console.log(`snapshot of a 256 MiB guest: median ${fmt(median(snapTimes))} (memory ${(snapInfo.memoryBytes / 2 ** 20).toFixed(0)} MiB, state ${(snapInfo.stateBytes / 1024).toFixed(0)} KiB)`);
    console.log(`cold cell run --rm busybox -- ${CMD.join(' ')}: median ${fmt(median(cold))}`);
    console.log(`cell run --rm --from SNAPSHOT -- same:        median ${fmt(median(forked))}`);
    console.log(`speed-up cold/fork: ${(median(cold) / median(forked)).toFixed(1)}x (target >= 20x)`);
    console.log(`fork to first exec result (SDK): median ${fmt(median(firstResult))} (target <= 100 ms)`);
    console.log(`${FLEET} forks at once: ${fmt(fleetMs)} total, ${fmt(fleetMs / FLEET)} per fork`);
    console.log(`host PSS: ${FLEET} idle forks ${(forkPss / 1024).toFixed(0)} MiB vs ${FLEET} cold VMs ${(coldPss / 1024).toFixed(0)} MiB: ratio ${(forkPss / coldPss).toFixed(2)} (target <= 0.3)`);
  } finally {
    const vms = await client.vms.list({ all: true }).catch(() => []);
    for (const v of vms) await client.vms.remove(v.id, { force: true }).catch(() => {});
    client.close();
    h.close();
  }
}

await main();
