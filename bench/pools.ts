/**
 * Pools (docs/pools.md), against forks without one, in one script with one snapshot's copies:
 * - fork to first exec result through the SDK (fork, then `echo ok` until its output arrives):
 *   no spare (CELL_SPARES=0, no pool) vs an exact pool vs a warm pool, interleaved, medians;
 *   target <= 50 ms from a warm pool;
 * - `fork --count 10` (SDK, all running when it returns) from a warm pool of 10 vs no pool;
 *   target <= 0.5 s from the pool;
 * - what a pool of 10 warm spares holds (PSS, as `cell info` counts it).
 */
import { CellClient } from '../src/sdk/index.js';
import { benchHome, fmt, median } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 9);
const FLEET = 10;
const CMD = ['sh', '-c', 'echo ok'];

async function poolFull(client: CellClient, name: string, size: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const s = await client.snapshots.get(name);
    if ((s.pool?.ready ?? 0) >= size) return;
    if (s.pool?.held) throw new Error(`pool of ${name} held: ${s.pool.held}`);
    if (Date.now() > deadline) throw new Error(`pool of ${name} not full after 120 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function forkToFirstResult(client: CellClient, snapshot: string, name: string): Promise<number> {
  const t = performance.now();
  const [vm] = await client.snapshots.fork(snapshot, { name });
  let first = 0;
  await client.vms.exec(vm!.id, { cmd: CMD }, { onStdout: () => void (first ||= performance.now() - t) });
  await client.vms.remove(vm!.id, { force: true });
  return first;
}

async function main(): Promise<void> {
  const h = benchHome();
  // No automatic spares: the "none" row is a fork that restores from scratch; pools are kept either way.
  const env = { ...h.env, CELL_SPARES: '0', CELL_NETWORK: process.env.CELL_NETWORK ?? 'off' };
  Object.assign(process.env, { CELL_SPARES: '0', CELL_NETWORK: env.CELL_NETWORK });
  const client = await CellClient.connect({ home: h.home });
  try {
    await client.setup({});
    const source = await client.vms.create({ image: 'busybox', name: 'source' });
    await client.vms.exec(source.id, { cmd: ['sh', '-c', '(while true; do sleep 1; done) >/dev/null 2>&1 &'] });
    for (const name of ['plain', 'exact', 'warm']) await client.snapshots.take(source.id, { name });
    await client.vms.remove(source.id, { force: true });
    await client.snapshots.setPool('exact', 1);
    await client.snapshots.setPool('warm', 1, { warm: true });

    const rows: Record<string, number[]> = { plain: [], exact: [], warm: [] };
    for (let i = 0; i < RUNS; i++) {
      for (const name of ['plain', 'exact', 'warm'] as const) {
        if (name !== 'plain') await poolFull(client, name, 1);
        await new Promise((r) => setTimeout(r, 300)); // the refill's QEMU settles
        rows[name]!.push(await forkToFirstResult(client, name, `${name}-${i}`));
      }
    }

    await client.snapshots.setPool('exact', 0);
    await client.snapshots.setPool('warm', FLEET, { warm: true });
    await poolFull(client, 'warm', FLEET);
    const pooledMemory = (await client.snapshots.get('warm')).pool!.memoryBytes;
    await new Promise((r) => setTimeout(r, 500));
    const t1 = performance.now();
    const fromPool = await client.snapshots.fork('warm', { count: FLEET, name: 'pooled' });
    const poolFleetMs = performance.now() - t1;
    await Promise.all(fromPool.map((v) => client.vms.remove(v.id, { force: true })));
    await client.snapshots.setPool('warm', 0);
    const t2 = performance.now();
    const plain = await client.snapshots.fork('plain', { count: FLEET, name: 'unpooled' });
    const plainFleetMs = performance.now() - t2;
    await Promise.all(plain.map((v) => client.vms.remove(v.id, { force: true })));

    const m = (k: string) => median(rows[k]!);
    console.log(`fork to first exec result (SDK, ${RUNS} interleaved rounds, medians):`);
    console.log(`  no spare:    ${fmt(m('plain'))}`);
    console.log(`  exact pool:  ${fmt(m('exact'))}  (${(m('plain') / m('exact')).toFixed(2)}x faster than no spare)`);
    console.log(`  warm pool:   ${fmt(m('warm'))}  (${(m('plain') / m('warm')).toFixed(2)}x faster than no spare, ${(m('exact') / m('warm')).toFixed(2)}x than exact; target <= 50 ms)`);
    console.log(`fork --count ${FLEET}: from a warm pool of ${FLEET} ${fmt(poolFleetMs)} vs no pool ${fmt(plainFleetMs)}: ${(plainFleetMs / poolFleetMs).toFixed(1)}x (target <= 500 ms)`);
    console.log(`a warm pool of ${FLEET} holds ${(pooledMemory / 2 ** 20).toFixed(0)} MiB PSS (${(pooledMemory / FLEET / 2 ** 20).toFixed(1)} MiB per spare)`);
  } finally {
    const vms = await client.vms.list({ all: true }).catch(() => []);
    for (const v of vms) await client.vms.remove(v.id, { force: true }).catch(() => {});
    client.close();
    h.close();
  }
}

await main();
