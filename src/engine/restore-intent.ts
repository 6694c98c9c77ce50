import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ID_PATTERN } from '../domain/ids.js';
import { writeFileSynced } from '../host/files.js';
import type { EngineContext } from './context.js';
import type { Vms } from './vms.js';

/**
 * `cell restore` in steps a crash can cut: the VM's machine is killed, its overlays dropped, its
 * base moved to the snapshot, the snapshot's RAM copied, the machine restored. Between dropping
 * the overlays and recording the new base a cold start would put the VM on a fresh overlay of its
 * *old* base: neither its disk nor the snapshot's. So the restore is written down first, in the
 * VM's folder (`restoring`, naming the snapshot), and a celld that starts finishes it.
 */
const RESTORING = 'restoring';

export async function markRestoring(vmDir: string, snapshotId: string): Promise<void> {
  await writeFileSynced(join(vmDir, RESTORING), JSON.stringify({ snapshot: snapshotId }), 0o600);
}

export async function clearRestoring(vmDir: string): Promise<void> {
  await rm(join(vmDir, RESTORING), { force: true });
}

async function readRestoring(vmDir: string): Promise<string | null> {
  try {
    const { snapshot } = JSON.parse(await readFile(join(vmDir, RESTORING), 'utf8')) as { snapshot?: unknown };
    return typeof snapshot === 'string' && ID_PATTERN.test(snapshot) ? snapshot : null;
  } catch {
    return null;
  }
}

/**
 * After a start (reconcile done, so a VM whose machine lives is attached): a restore a dead celld
 * left is finished. A VM running again either was never halted or was restored already: its
 * intent just goes. Any other is booted from the snapshot, as asked; if that fails it stays
 * stopped on whatever base its record names, and its overlay, if gone, is made afresh on it.
 */
export async function finishRestores(ctx: EngineContext, vms: Vms): Promise<string[]> {
  const finished: string[] = [];
  for (const vm of ctx.stores.vms.list()) {
    const dir = ctx.paths.vmDir(vm.id);
    const snapshotId = await readRestoring(dir);
    if (snapshotId === null) {
      await clearRestoring(dir);
      continue;
    }
    try {
      const snapshot = ctx.stores.snapshots.getAny(snapshotId);
      if (snapshot && vm.state !== 'running' && ctx.live.get(vm.id) === undefined) {
        await vms.withLock(vm.id, () => vms.boot(vm.id, { snapshot, copyMemory: true }));
        finished.push(vm.name);
      }
    } catch (err) {
      ctx.log.warn(`finishing the restore of VM ${vm.name} after a restart failed: ${(err as Error).message}`);
    } finally {
      await clearRestoring(dir);
    }
  }
  return finished;
}
