import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheEntryFor, type PendingCacheEntry } from '../domain/action.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { stripControl } from '../domain/terminal-text.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import type { VmRecord } from '../domain/vm.js';
import { allocatedBytes, writeFileSynced } from '../host/files.js';
import type { EngineContext } from './context.js';
import type { Images } from './images.js';
import { releaseMemory } from './machine-spec.js';
import { convertToSharedMemory } from './memory-conversion.js';
import { clonedMemoryBytes, dropCloneNote, parentMemory, storeMemory } from './snapshot-memory.js';
import { exitInfo } from './vm-records.js';
import type { Vms } from './vms.js';

/**
 * What a snapshot in the making is for, written into its folder before anything else happens, so
 * a celld killed at any step can finish or undo it (snapshot-recovery.ts). It travels with the
 * folder (`.tmp-<id>` → `<id>`) and is deleted once the VM runs on the new layer.
 */
export interface SnapshotIntent {
  vm: string;
  /** Resume the VM from the snapshot afterwards (false: `snapshot --stop`). */
  resume: boolean;
  /** `pause --to-disk`: the snapshot is retired and the VM left `suspended`, in the same transaction. */
  suspend?: boolean;
  /** The record, but for the sizes (known once the files are written). */
  record: Omit<SnapshotRecord, 'stateBytes' | 'memoryBytes' | 'diskBytes'>;
  /** An action's cache entry, recorded with the snapshot (an action's VM is gone after a crash). */
  cache?: PendingCacheEntry;
}

export const INTENT_FILE = 'intent.json';
/** Written once state and RAM are complete: from here the snapshot is finished, not undone. */
export const SAVED_MARKER = 'saved';
/** A snapshot's disk layers (the data disk's only when the VM has one). */
export const LAYERS = ['disk.qcow2', 'data.qcow2'];

export function stagingDir(ctx: Pick<EngineContext, 'paths'>, id: string): string {
  return join(ctx.paths.snapshots, `.tmp-${id}`);
}

export async function readIntent(dir: string): Promise<SnapshotIntent | null> {
  try {
    const intent = JSON.parse(await readFile(join(dir, INTENT_FILE), 'utf8')) as SnapshotIntent;
    return typeof intent.vm === 'string' && typeof intent.record?.id === 'string' ? intent : null;
  } catch {
    return null;
  }
}

/**
 * Steps of `cell snapshot` on a running VM (its lock held): stage, pause, save state and RAM,
 * end the paused machine, move its disk layers into the snapshot, publish and record, resume the
 * VM from the snapshot. Each step is a crash-drill checkpoint.
 */
export async function takeSnapshot(ctx: EngineContext, vms: Vms, images: Images, vm: VmRecord, intent: SnapshotIntent): Promise<SnapshotRecord> {
  const { paths, live } = ctx;
  const staging = stagingDir(ctx, intent.record.id);
  await mkdir(staging, { recursive: true });
  await writeFileSynced(join(staging, INTENT_FILE), JSON.stringify(intent));
  let quit = false;
  let frozen = false;
  let unmounted = false;
  try {
    await ctx.checkpoint('snapshot:staged');
    const agent = live.require(vm.id).agent;
    if (vm.spec.volumes?.length) {
      // The rule of docs/volumes.md: volumes are not in snapshots. Unmounted, the guest's RAM holds
      // nothing of theirs, and every VM that comes out of the snapshot mounts them as they are then.
      await agent.unmountVolumes().catch((err: unknown) => {
        throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name}'s volumes must be unmounted for a snapshot, and one cannot be: ${stripControl((err as Error).message ?? String(err)).slice(0, 200)} (stop what uses it, then snapshot)`);
      });
      unmounted = true;
    }
    // What the guest's page cache holds must reach the disk layer being frozen: a VM that later
    // boots cold from it (start after --stop, a template's cold start) sees only the disk.
    await agent.sync().catch(() => {});
    // Stopped inside the guest too: every VM that comes out of the snapshot thaws them only after
    // its reseed (live-machines.ts initialiseGuest), so no fork's process draws the same random bytes.
    frozen = await agent.freeze();
    const machine = await live.pause(vm.id);
    await ctx.checkpoint('snapshot:paused');
    try {
      const parent = parentMemory(ctx, intent.record);
      if (machine.memoryShared) {
        // RAM is already a file: save only device state, then store the file while paused.
        await machine.control.saveState(join(staging, 'state'), { withRam: false });
        await storeMemory(paths.memoryFile(vm.id), staging, parent);
      } else {
        // RAM is a private copy-on-write mapping: save it whole, then turn it into a file.
        await machine.control.saveState(join(staging, 'full-state'), { withRam: true });
        await convertToSharedMemory(ctx, vm, staging);
        await storeMemory(join(staging, 'memory'), staging, parent);
      }
    } catch (err) {
      throw await explainNoSpace(err, paths.snapshots, paths.memoryFile(vm.id));
    }
    await writeFileSynced(join(staging, SAVED_MARKER), '');
    await ctx.checkpoint('snapshot:saved');
    await live.quitPaused(vm.id);
    quit = true;
  } catch (err) {
    if (!quit) {
      await live.resume(vm.id).catch(() => {});
      if (frozen) await live.get(vm.id)?.agent.thaw().catch(() => {});
      if (unmounted) await live.get(vm.id)?.agent.mountVolumes().catch(() => {});
    }
    await rm(staging, { recursive: true, force: true });
    throw err instanceof CellError ? err : new CellError(ErrorCodes.SNAPSHOT_FAILED, `snapshot of ${vm.name} failed: ${(err as Error).message}`);
  }
  await ctx.checkpoint('snapshot:quit');
  return finishSnapshot(ctx, vms, images, intent, staging);
}

/**
 * The steps after the machine ended, shared with recovery: the VM's disk layers move into the
 * staged folder, the folder is published, the snapshot and the VM's new base recorded in one
 * transaction, and the VM resumed from the snapshot. Each step can be repeated after a crash.
 */
export async function finishSnapshot(ctx: EngineContext, vms: Vms, images: Images, intent: SnapshotIntent, from: string): Promise<SnapshotRecord> {
  const { paths, stores } = ctx;
  const id = intent.record.id;
  const final = paths.snapshotDir(id);
  if (from !== final) {
    for (const layer of LAYERS) {
      const own = join(paths.vmDir(intent.vm), layer);
      if (existsSync(own)) await rename(own, join(from, layer));
    }
    await ctx.checkpoint('snapshot:disk-moved');
    await rename(from, final);
    await ctx.checkpoint('snapshot:published');
  }
  let record = stores.snapshots.getAny(id);
  if (!record) {
    const sizes = await Promise.all(['state', 'memory', ...LAYERS].map((f) => allocatedBytes(join(final, f))));
    // A RAM file cloned from the parent's holds only the changed pages of its own.
    const memoryBytes = (await clonedMemoryBytes(final)) ?? sizes[1]!;
    record = { ...intent.record, stateBytes: sizes[0]!, memoryBytes, diskBytes: sizes[2]! + sizes[3]! };
    const complete = record;
    ctx.db.transaction(() => {
      stores.snapshots.insert(complete);
      images.pin('snapshot', id, complete.spec.imageDigest);
      // From now on the VM's disk is an overlay on the frozen layer. (After a crash, recovery
      // found the VM stopped already: only its base changes.)
      const vm = stores.vms.get(intent.vm);
      const patch = { baseSnapshot: id, pid: null, stoppedAt: new Date().toISOString(), exit: exitInfo('snapshot') };
      if (vm?.state === 'stopped') stores.vms.update(intent.vm, patch);
      else if (vm) stores.vms.setState(intent.vm, 'stopped', patch);
      if (intent.suspend && vm) {
        stores.snapshots.retire(id, patch.stoppedAt);
        stores.vms.setState(intent.vm, 'suspended', { exit: null });
      }
      if (intent.cache) stores.actionCache.put(cacheEntryFor(intent.cache, id, patch.stoppedAt), intent.cache.replace);
    })();
    releaseMemory(paths, intent.vm);
    await ctx.checkpoint('snapshot:recorded');
  }
  // It continues on its own copy of the RAM it was saved with (not a copy-on-write mapping), so
  // its next snapshot is again a file copy (~0.2 s) rather than a full RAM save (~1.4 s here).
  try {
    if (intent.resume && stores.vms.get(intent.vm)) await vms.boot(intent.vm, { snapshot: record, copyMemory: true });
  } finally {
    // Done with, whether the VM came back or not: a later start must not boot it unasked.
    await rm(join(final, INTENT_FILE), { force: true });
    await rm(join(final, SAVED_MARKER), { force: true });
    await dropCloneNote(final);
  }
  return record;
}

/** A full file system says so, with what was needed and what is free, instead of a tool's error. */
async function explainNoSpace(err: unknown, dir: string, memoryFile: string): Promise<unknown> {
  const text = `${(err as NodeJS.ErrnoException).code ?? ''} ${(err as Error).message ?? ''}`;
  if (!/ENOSPC|No space left on device/.test(text)) return err;
  const [fs, needed] = await Promise.all([statfs(dir).catch(() => null), allocatedBytes(memoryFile)]);
  const free = fs ? fs.bavail * fs.bsize : NaN;
  return new CellError(
    ErrorCodes.SNAPSHOT_FAILED,
    `the file system of ${dir} is full: the snapshot needs about ${mib(needed)} MiB for the guest's RAM, ${Number.isNaN(free) ? 'unknown' : mib(free)} MiB are free`,
    { neededBytes: needed, freeBytes: free },
  );
}

const mib = (bytes: number) => (bytes / (1024 * 1024)).toFixed(1);
