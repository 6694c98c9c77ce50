import { existsSync } from 'node:fs';
import { readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { cloneWithChanges } from '../host/clone-file.js';
import { copySparse, fsyncPath, writeFileSynced } from '../host/files.js';
import type { EngineContext } from './context.js';

/**
 * A snapshot's RAM file, stored against its parent's where it can be: on a file system with
 * reflinks the file is a clone of the parent snapshot's RAM with only the changed pages written
 * (host/clone-file.ts), so a cached build step or a child snapshot costs the pages it changed. A
 * note in the snapshot's folder says what the clone added, which is the size the snapshot reports.
 */
export const CLONE_NOTE = 'memory-clone.json';

interface CloneNote {
  /** The snapshot whose RAM the file was cloned from. */
  parent: string;
  /** Bytes the snapshot's RAM file added over its parent's when it was taken. */
  changedBytes: number;
}

/** CELL_RAM_CLONES=0 stores every snapshot's RAM whole (to compare, or to keep files unfragmented). */
export function ramClonesEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CELL_RAM_CLONES !== '0';
}

/** The RAM file a new snapshot is stored against: its parent's, when that one exists with the same size of RAM. */
export function parentMemory(ctx: Pick<EngineContext, 'paths' | 'stores'>, record: Pick<SnapshotRecord, 'parentSnapshot' | 'spec'>): { id: string; path: string } | null {
  if (!ramClonesEnabled()) return null;
  const parent = record.parentSnapshot ? ctx.stores.snapshots.getAny(record.parentSnapshot) : undefined;
  if (!parent || parent.spec.memoryMib !== record.spec.memoryMib) return null;
  const path = join(ctx.paths.snapshotDir(parent.id), 'memory');
  return existsSync(path) ? { id: parent.id, path } : null;
}

/**
 * Writes the guest's RAM (`source`) as the `memory` file of the snapshot folder `dir`: a clone of
 * `parent`'s with the changed pages written, or else a sparse copy. `source` may be that very file
 * (a converter wrote it in place): it is then replaced by the clone, or synced where it is.
 */
export async function storeMemory(source: string, dir: string, parent: { id: string; path: string } | null): Promise<void> {
  const target = join(dir, 'memory');
  if (parent) {
    const clone = join(dir, 'memory.clone');
    const cloned = await cloneWithChanges(parent.path, source, clone);
    if (cloned) {
      await rename(clone, target);
      const note: CloneNote = { parent: parent.id, changedBytes: cloned.changedBytes };
      await writeFileSynced(join(dir, CLONE_NOTE), JSON.stringify(note));
      return;
    }
  }
  if (source !== target) await copySparse(source, target);
  // A converter's QEMU wrote it through a mapping: on disk before the snapshot is called saved.
  else await fsyncPath(target);
}

/** What a snapshot's RAM added over its parent's, if it was stored as a clone (else null: its allocated size says). */
export async function clonedMemoryBytes(dir: string): Promise<number | null> {
  try {
    const note = JSON.parse(await readFile(join(dir, CLONE_NOTE), 'utf8')) as Partial<CloneNote>;
    return Number.isSafeInteger(note.changedBytes) && note.changedBytes! >= 0 ? note.changedBytes! : null;
  } catch {
    return null;
  }
}

export async function dropCloneNote(dir: string): Promise<void> {
  await rm(join(dir, CLONE_NOTE), { force: true });
}
