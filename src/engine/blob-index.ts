import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { MAX_DISK_DELTAS, MEMORY_CHUNK_BYTES } from '../domain/snapshot-artifact.js';
import { writeFileSynced } from '../host/files.js';
import { isDigest } from '../image/digest.js';
import type { EngineContext } from './context.js';

/**
 * What a snapshot's parts are called at registries, kept beside them (`blobs.json`) once a push
 * computed them or a pull fetched them: the digest each 4 MiB chunk of its RAM file packs to, and
 * the disk layers (a base and deltas) its disk is made of. A later push of a child sends its disk
 * as a delta over those layers; a later pull of a child takes the chunks its ancestors have from
 * their RAM files, and builds its disk on its parent's. Only a hint: a chunk found this way is
 * packed again and kept only if it has the digest, and a missing or broken index means the parts
 * are sent or fetched whole.
 */
export const BLOB_INDEX = 'blobs.json';

/** How far up a snapshot's lineage a pull looks for chunks it has. */
const MAX_ANCESTORS = 4;

export interface DiskBlob {
  digest: `sha256:${string}`;
  size: number;
}

export interface BlobIndex {
  /** RAM chunk offset -> digest of the chunk packed as push packs it. */
  chunks: Map<number, string>;
  /** The disk's layers at the registry: a standalone base, then deltas in order (empty: unknown). */
  disk: DiskBlob[];
}

export async function writeBlobIndex(dir: string, index: BlobIndex): Promise<void> {
  await writeFileSynced(join(dir, BLOB_INDEX), JSON.stringify({ chunkBytes: MEMORY_CHUNK_BYTES, chunks: Object.fromEntries(index.chunks), disk: index.disk }), 0o600);
}

export async function readBlobIndex(dir: string): Promise<BlobIndex> {
  const index: BlobIndex = { chunks: new Map(), disk: [] };
  try {
    const doc = JSON.parse(await readFile(join(dir, BLOB_INDEX), 'utf8')) as { chunkBytes?: unknown; chunks?: Record<string, unknown>; disk?: unknown };
    if (doc.chunkBytes !== MEMORY_CHUNK_BYTES) return index;
    for (const [offset, digest] of Object.entries(doc.chunks ?? {})) {
      const at = Number(offset);
      if (Number.isSafeInteger(at) && at % MEMORY_CHUNK_BYTES === 0 && isDigest(digest)) index.chunks.set(at, digest);
    }
    const disk = Array.isArray(doc.disk) ? (doc.disk as unknown[]) : [];
    const wellFormed = (d: unknown): d is DiskBlob => {
      const b = d as Partial<DiskBlob> | null;
      return typeof b === 'object' && b !== null && isDigest(b.digest) && Number.isSafeInteger(b.size) && b.size! > 0;
    };
    if (disk.length <= MAX_DISK_DELTAS + 1 && disk.every(wellFormed)) index.disk = disk;
  } catch {
    // No index (never pushed or pulled here), or a torn one: nothing to take locally.
  }
  return index;
}

/** A chunk this host has: in which RAM file, at which offset. */
export interface LocalChunk {
  path: string;
  offset: number;
}

/** The snapshot `parentId` and its ancestors here (at most MAX_ANCESTORS, nearest first), each with its folder and blob index. */
export async function* indexedAncestors(
  ctx: Pick<EngineContext, 'paths' | 'stores'>,
  parentId: string | null,
): AsyncGenerator<{ ancestor: SnapshotRecord; dir: string; index: BlobIndex }> {
  let id = parentId;
  for (let depth = 0; id && depth < MAX_ANCESTORS; depth++) {
    const ancestor = ctx.stores.snapshots.getAny(id);
    if (!ancestor) return;
    const dir = ctx.paths.snapshotDir(ancestor.id);
    yield { ancestor, dir, index: await readBlobIndex(dir) };
    id = ancestor.parentSnapshot;
  }
}

/** Digests of the chunks the ancestors of `record` on this host have indexed (nearest ancestor first). */
export async function ancestorChunks(ctx: Pick<EngineContext, 'paths' | 'stores'>, record: Pick<SnapshotRecord, 'parentSnapshot' | 'spec'>): Promise<Map<string, LocalChunk>> {
  const found = new Map<string, LocalChunk>();
  for await (const { ancestor, dir, index } of indexedAncestors(ctx, record.parentSnapshot)) {
    if (ancestor.spec.memoryMib !== record.spec.memoryMib) break;
    for (const [offset, digest] of index.chunks) if (!found.has(digest)) found.set(digest, { path: join(dir, 'memory'), offset });
  }
  return found;
}
