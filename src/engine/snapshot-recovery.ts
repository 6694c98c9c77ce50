import { existsSync } from 'node:fs';
import { readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ID_PATTERN } from '../domain/ids.js';
import { homeTmpPrefix } from '../domain/paths.js';
import type { EngineContext } from './context.js';
import type { Images } from './images.js';
import { BlobStore } from '../store/blob-store.js';
import { CONVERTER_ID_FILE, conversionDirPrefix } from './memory-conversion.js';
import { collectRetiredSnapshots } from './retired-snapshots.js';
import { finishSnapshot, INTENT_FILE, LAYERS, readIntent, SAVED_MARKER, type SnapshotIntent } from './snapshot-take.js';
import type { Vms } from './vms.js';


/**
 * After a start: what a celld killed in the middle of a snapshot, an import or a removal left.
 * Runs after reconcile (VMs whose machine lives are attached and running again).
 *
 * - A snapshot whose state and RAM were saved completely (its `saved` marker) and whose VM's
 *   machine is gone is finished: layers moved, published, recorded, the VM resumed from it.
 * - One cut short earlier is undone: any disk layer it took goes back to the VM, the folder goes.
 *   The VM keeps running on its own disk (reconcile resumed it), or, if its machine is gone, is
 *   stopped with its disk intact.
 * - Import, export, push and pull staging folders (and a pull's half-fetched blobs), folders of snapshots whose rows were deleted, paused RAM converters
 *   and migration save-socket folders of this CELL_HOME are removed; retired snapshots nothing
 *   stands on are deleted.
 */
export async function recoverSnapshots(ctx: EngineContext, vms: Vms, images: Images): Promise<void> {
  for (const entry of await readdir(ctx.paths.snapshots)) {
    const dir = join(ctx.paths.snapshots, entry);
    try {
      if (['.import-', '.export-', '.push-', '.pull-'].some((p) => entry.startsWith(p))) await rm(dir, { recursive: true, force: true });
      // A registry pull's fetched blobs stay for the next pull to resume from; its half-written ones go.
      else if (entry === '.blobs') await new BlobStore(dir).removeStaleTemps(0);
      else if (entry.startsWith('.tmp-')) await recoverStaged(ctx, vms, images, dir);
      else if (ID_PATTERN.test(entry)) await recoverPublished(ctx, vms, images, entry, dir);
    } catch (err) {
      ctx.log.warn(`recovering ${dir} after a restart failed: ${(err as Error).message}`);
    }
  }
  await sweepConverters(ctx);
  await sweepSaveSockets(ctx);
  await collectRetiredSnapshots(ctx, (id) => images.unpin('snapshot', id));
}

async function recoverStaged(ctx: EngineContext, vms: Vms, images: Images, dir: string): Promise<void> {
  const intent = await readIntent(dir);
  if (intent && canFinish(ctx, intent, dir)) {
    await finishSnapshot(ctx, vms, images, intent, dir);
    return;
  }
  if (intent) await giveLayersBack(ctx, intent, dir);
  await rm(dir, { recursive: true, force: true });
}

async function recoverPublished(ctx: EngineContext, vms: Vms, images: Images, id: string, dir: string): Promise<void> {
  const recorded = ctx.stores.snapshots.getAny(id) !== undefined;
  const intent = existsSync(join(dir, INTENT_FILE)) ? await readIntent(dir) : null;
  if (recorded) {
    // Recorded, but the VM may not have been resumed from it yet.
    const vm = intent ? ctx.stores.vms.get(intent.vm) : undefined;
    if (intent && (vm?.state !== 'stopped' || vm.baseSnapshot !== id)) intent.resume = false;
    if (intent) await finishSnapshot(ctx, vms, images, intent, dir);
    return;
  }
  if (intent && canFinish(ctx, intent, dir)) {
    await finishSnapshot(ctx, vms, images, intent, dir);
    return;
  }
  // A removal deletes the row first, then the files: these are such files (or a cut-short publish).
  if (intent) await giveLayersBack(ctx, intent, dir);
  await rm(dir, { recursive: true, force: true });
}

/** The save completed, the VM still exists and its machine is gone: the snapshot can be finished. */
function canFinish(ctx: EngineContext, intent: SnapshotIntent, dir: string): boolean {
  const vm = ctx.stores.vms.get(intent.vm);
  return existsSync(join(dir, SAVED_MARKER)) && vm !== undefined && ctx.live.get(vm.id) === undefined && vm.state === 'stopped';
}

/** Disk layers a cut-short snapshot took from its VM go back, unless the VM has its own again. */
async function giveLayersBack(ctx: EngineContext, intent: SnapshotIntent, dir: string): Promise<void> {
  if (!ctx.stores.vms.get(intent.vm)) return;
  for (const layer of LAYERS) {
    const taken = join(dir, layer);
    const own = join(ctx.paths.vmDir(intent.vm), layer);
    if (existsSync(taken) && !existsSync(own)) await rename(taken, own);
  }
}

/** Folders under /tmp whose name starts with `prefix` (this CELL_HOME's, see homeTmpPrefix). */
async function ownTmpDirs(prefix: string): Promise<string[]> {
  const entries = await readdir(dirname(prefix)).catch(() => [] as string[]);
  return entries.filter((e) => e.startsWith(basename(prefix))).map((e) => join(dirname(prefix), e));
}

/** RAM converters (memory-conversion.ts) of this CELL_HOME left paused by a dead celld. */
async function sweepConverters(ctx: EngineContext): Promise<void> {
  for (const dir of await ownTmpDirs(conversionDirPrefix(ctx.paths))) {
    const id = (await readFile(join(dir, CONVERTER_ID_FILE), 'utf8').catch(() => '')).trim();
    const pid = Number(await readFile(ctx.backend.files(dir).pidFile, 'utf8').catch(() => ''));
    if (id && pid > 0) await ctx.backend.kill(pid, id);
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Folders a save listened in (vmm/qemu/migration.ts) when celld died mid-save: only a socket, but
 * one per cut-short snapshot would pile up in /tmp. No celld of this CELL_HOME runs a save now.
 */
async function sweepSaveSockets(ctx: EngineContext): Promise<void> {
  for (const dir of await ownTmpDirs(homeTmpPrefix(ctx.paths.home, 'mig'))) await rm(dir, { recursive: true, force: true });
}
