import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Db } from '../store/database.js';
import { BlobStore } from '../store/blob-store.js';
import { ImagePins } from '../store/image-pins.js';
import { imagesDir, storeTag, workDir } from './store-layout.js';
import { DEFAULT_TMPFS_STAGING, removeTree, TMPFS_STAGING_PREFIX } from './unpack/staging.js';

/**
 * Garbage collection and LRU eviction of image content; the engine decides when to call them and
 * must not run them while its own pulls of the same store are in flight (files younger than
 * `graceMs` are spared as a second line of defence: a pull writes blobs before it records them).
 */
export const DEFAULT_GC_GRACE_MS = 10 * 60 * 1000;
const DISK_NAME = /^([a-f0-9]{64})\.ext4$/;

export interface GcResult {
  blobsRemoved: string[];
  disksRemoved: string[];
  bytesFreed: number;
}

/**
 * Removes blobs and base disks that no image reference and no pin needs, stale temp files, and
 * tmpfs unpack staging dirs whose process is gone (they would hold RAM until reboot).
 */
export async function collectGarbage(opts: { storeRoot: string; db: Db; graceMs?: number; stagingTmpfs?: string | null }): Promise<GcResult> {
  const grace = opts.graceMs ?? DEFAULT_GC_GRACE_MS;
  const now = Date.now();
  const pins = new ImagePins(opts.db);
  const store = new BlobStore(opts.storeRoot);
  const result: GcResult = { blobsRemoved: [], disksRemoved: [], bytesFreed: 0 };

  pins.dropUnusedImageBlobLinks();
  const liveBlobs = pins.liveBlobDigests();
  for (const blob of await store.list()) {
    if (liveBlobs.has(blob.digest) || now - blob.mtimeMs < grace) continue;
    if (await store.delete(blob.digest)) {
      result.blobsRemoved.push(blob.digest);
      result.bytesFreed += blob.size;
    }
  }
  await store.removeStaleTemps(grace);

  const liveImages = pins.liveImageDigests();
  const usedDisks = new Set((opts.db.prepare('SELECT disk_path FROM images').all() as { disk_path: string }[]).map((r) => r.disk_path));
  const dir = imagesDir(opts.storeRoot);
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const path = join(dir, name);
    const s = await stat(path).catch(() => undefined);
    if (!s || now - s.mtimeMs < grace) continue;
    const m = DISK_NAME.exec(name);
    if (m) {
      if (liveImages.has(`sha256:${m[1]}`) || usedDisks.has(path)) continue;
      await rm(path, { force: true });
      result.disksRemoved.push(path);
      result.bytesFreed += s.blocks * 512;
    } else if (name.startsWith('.') && name.includes('.tmp-')) {
      await rm(path, { force: true });
    }
  }
  const work = workDir(opts.storeRoot);
  for (const name of await readdir(work).catch(() => [] as string[])) {
    const s = await stat(join(work, name)).catch(() => undefined);
    if (s && now - s.mtimeMs >= grace && (name.startsWith('unpack-') || name.startsWith('import-'))) {
      await rm(join(work, name), { recursive: true, force: true });
    }
  }
  if (opts.stagingTmpfs !== null) await removeOrphanStaging(opts.stagingTmpfs ?? DEFAULT_TMPFS_STAGING, grace);
  return result;
}

/**
 * At start-up, before any pull or import of this store can run (one celld per CELL_HOME), what a
 * celld killed in the middle of one left goes at once rather than after the grace period:
 * `pull` pins, temp blobs, base disks nothing records, blobs nothing pins, work dirs, and this
 * store's tmpfs staging dirs whichever pid made them.
 */
export async function sweepImageStore(opts: { storeRoot: string; db: Db; stagingTmpfs?: string | null }): Promise<GcResult> {
  new ImagePins(opts.db).unpinKind('pull');
  const result = await collectGarbage({ ...opts, graceMs: 0 });
  if (opts.stagingTmpfs === null) return result;
  const dir = opts.stagingTmpfs ?? DEFAULT_TMPFS_STAGING;
  const own = new RegExp(`^${TMPFS_STAGING_PREFIX}\\d+-${storeTag(opts.storeRoot)}-`);
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (own.test(name)) await removeTree(join(dir, name));
  }
  return result;
}

/** `cellvm-unpack-<pid>-*` dirs of processes that no longer run (and older than the grace period). */
async function removeOrphanStaging(dir: string, grace: number): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const pid = name.startsWith(TMPFS_STAGING_PREFIX) ? Number(name.slice(TMPFS_STAGING_PREFIX.length).split('-')[0]) : NaN;
    if (!Number.isSafeInteger(pid) || pid <= 0 || isAlive(pid)) continue;
    const s = await stat(join(dir, name)).catch(() => undefined);
    if (s?.isDirectory() && Date.now() - s.mtimeMs >= grace) await removeTree(join(dir, name));
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes one image reference (never a built-in one); its content goes at the next collection. */
export function removeImageReference(db: Db, reference: string): boolean {
  return new ImagePins(db).removeReference(reference);
}

/**
 * Drops least-recently-used image references until the images' disks (counted once per digest)
 * fit in `maxBytes`, skipping built-in images and digests a VM or snapshot pins; then collects.
 */
export async function evictImages(opts: { storeRoot: string; db: Db; maxBytes: number; graceMs?: number }): Promise<{ evicted: string[]; gc: GcResult }> {
  const pins = new ImagePins(opts.db);
  const rows = pins.byLeastRecentUse().filter((r) => !r.builtin);
  const sizeByDigest = new Map<string, number>();
  const refsByDigest = new Map<string, number>();
  for (const r of rows) {
    sizeByDigest.set(r.digest, r.sizeBytes);
    refsByDigest.set(r.digest, (refsByDigest.get(r.digest) ?? 0) + 1);
  }
  let total = [...sizeByDigest.values()].reduce((a, b) => a + b, 0);
  const pinned = pins.pinnedDigests();
  const evicted: string[] = [];
  for (const r of rows) {
    if (total <= opts.maxBytes) break;
    if (pinned.has(r.digest)) continue;
    pins.removeReference(r.reference);
    evicted.push(r.reference);
    const left = (refsByDigest.get(r.digest) ?? 1) - 1;
    refsByDigest.set(r.digest, left);
    if (left === 0) total -= sizeByDigest.get(r.digest) ?? 0;
  }
  const gc = await collectGarbage({ storeRoot: opts.storeRoot, db: opts.db, ...(opts.graceMs !== undefined ? { graceMs: opts.graceMs } : {}) });
  return { evicted, gc };
}
