import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { EngineContext } from './context.js';

/**
 * Deletes retired snapshots (removed by the user while VMs or later snapshots stood on their disk
 * layer) once nothing stands on them any more, parents after children. The row goes first, then
 * the files: a crash in between leaves an unrecorded folder, which the next start sweeps.
 */
export async function collectRetiredSnapshots(ctx: Pick<EngineContext, 'db' | 'stores' | 'paths'>, unpin: (snapshotId: string) => void): Promise<string[]> {
  const removed: string[] = [];
  for (;;) {
    const unused = ctx.stores.snapshots.unusedRetired();
    if (unused.length === 0) return removed;
    for (const snapshot of unused) {
      ctx.db.transaction(() => {
        ctx.stores.actionCache.deleteForSnapshot(snapshot.id);
        ctx.stores.snapshots.delete(snapshot.id);
        unpin(snapshot.id);
      })();
      await rm(ctx.paths.snapshotDir(snapshot.id), { recursive: true, force: true });
      removed.push(snapshot.id);
    }
  }
}

/** A suspend snapshot's RAM and device state (vm-suspend.ts), once its VM runs on its own copy or was stopped: its disk layer stays. */
export async function dropSavedMemory(dir: string): Promise<void> {
  await rm(join(dir, 'memory'), { force: true });
  await rm(join(dir, 'state'), { force: true });
}
