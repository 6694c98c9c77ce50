import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { parseConfig, withEnvironment, type CellConfig } from '../domain/config.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { ID_PATTERN } from '../domain/ids.js';
import { isLive, mayHaveMachine, recoveredExitReason } from '../domain/vm-state.js';
import type { EngineContext } from './context.js';
import { releaseMemory } from './machine-spec.js';
import { halfMade } from './half-made.js';
import { exitInfo } from './vm-records.js';
import type { Vms } from './vms.js';

/**
 * After a daemon restart: reconnect to running machines still alive, end and record as stopped
 * the rest (a VM left `starting` or `stopping` by a daemon that died is not trusted to finish).
 * The state changes go through the same lifecycle table as everything else.
 */
export async function reconcile(ctx: Pick<EngineContext, 'stores' | 'live' | 'backend' | 'paths' | 'network' | 'log'>): Promise<void> {
  const { vms } = ctx.stores;
  for (const vm of vms.list()) {
    if (!mayHaveMachine(vm.state)) continue;
    // Reattaching resumes the machine (its agent must answer): a paused one is paused again at once.
    const attached = vm.pid && isLive(vm.state) ? await ctx.live.attach(vm.id, ctx.paths.vmDir(vm.id), vm.pid) : null;
    if (attached && vm.state === 'paused') await attached.control.pause();
    if (attached) {
      // Its namespace lived on with it; its published ports closed with the old celld.
      if (vm.spec.networks?.length) await ctx.network.attach(vm).catch((err: unknown) => ctx.log.warn(`VM ${vm.name}: its ports are not served: ${(err as Error).message}`));
      continue;
    }
    if (vm.pid) await ctx.backend.kill(vm.pid, vm.id);
    releaseMemory(ctx.paths, vm.id);
    vms.setState(vm.id, 'stopped', {
      stoppedAt: new Date().toISOString(),
      pid: null,
      exit: vm.exit ?? exitInfo(recoveredExitReason(vm.state)),
    });
    // Cut short while coming back from a pause to disk: its memory is still saved, so it is
    // paused to disk again (unpause tries once more), not lost.
    if (vm.state === 'starting' && vm.baseSnapshot && ctx.stores.snapshots.isRetired(vm.baseSnapshot) && existsSync(join(ctx.paths.snapshotDir(vm.baseSnapshot), 'memory'))) {
      vms.setState(vm.id, 'suspended', { exit: null });
    }
  }
}

/**
 * VM directories no record names: spares of a celld that crashed, or a VM whose creation was cut
 * short. Their QEMU (if it still runs, and is theirs) is ended and the directory removed.
 */
export async function sweepOrphans(ctx: Pick<EngineContext, 'stores' | 'backend' | 'paths'>): Promise<void> {
  const { paths } = ctx;
  const known = new Set(ctx.stores.vms.list().map((vm) => vm.id));
  const orphans = [
    ...(await readdir(paths.vms)).filter((id) => !known.has(id)).map((id) => ({ id, dir: paths.vmDir(id) })),
    ...(await readdir(paths.spares).catch(() => [] as string[])).map((id) => ({ id, dir: paths.spareDir(id) })),
  ];
  for (const { id, dir } of orphans) {
    if (!ID_PATTERN.test(id)) continue;
    const pid = Number(await readFile(ctx.backend.files(dir).pidFile, 'utf8').catch(() => ''));
    if (pid > 0) await ctx.backend.kill(pid, id);
    releaseMemory(paths, id);
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * VMs a dead celld was still making (a run, fork or build cut short before their first boot
 * finished) and VMs of its own operations (actions, template builds) are removed: after a crash,
 * every half-made thing is either finished or gone. Runs after reconcile, so a VM whose machine
 * is running again counts as finished.
 */
export async function removeHalfMade(ctx: Pick<EngineContext, 'stores' | 'paths'>, vms: Pick<Vms, 'remove'>): Promise<string[]> {
  const removed: string[] = [];
  for (const vm of ctx.stores.vms.list()) {
    if (!halfMade(ctx.paths.vmDir(vm.id), vm.state === 'running')) continue;
    await vms.remove(vm.id, true);
    removed.push(vm.name);
  }
  return removed;
}

/** CELL_HOME/config.json (absent: defaults) with celld's environment on top. A bad file stops celld with a clear line. */
export async function loadConfig(path: string): Promise<CellConfig> {
  let text: string | undefined;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  let raw: unknown = {};
  if (text !== undefined) {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path}: not valid JSON (${(err as Error).message})`);
    }
  }
  return withEnvironment(parseConfig(raw, path), process.env);
}
