import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { MEMORY_CHUNK_BYTES } from '../domain/snapshot-artifact.js';
import { writeFileSynced } from '../host/files.js';
import type { EngineContext } from './context.js';

/**
 * Which 4 MiB chunks of a snapshot's RAM file pack to which registry digest, kept beside the file
 * (`chunks.json`) once a push computed them or a pull fetched them. A later pull of a child looks
 * up its chunks' digests in its ancestors' indexes and takes the ones this host has from their RAM
 * files instead of the registry. Only a hint: a chunk found this way is packed again and stored
 * under its digest only if it matches (BlobStore checks), and a missing or broken index means the
 * chunks are fetched.
 */
export const CHUNK_INDEX = 'chunks.json';

/** How far up a snapshot's lineage a pull looks for chunks it has. */
const MAX_ANCESTORS = 4;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

export async function writeChunkIndex(dir: string, digests: ReadonlyMap<number, string>): Promise<void> {
  await writeFileSynced(join(dir, CHUNK_INDEX), JSON.stringify({ chunkBytes: MEMORY_CHUNK_BYTES, chunks: Object.fromEntries(digests) }), 0o600);
}

export async function readChunkIndex(dir: string): Promise<Map<number, string>> {
  const index = new Map<number, string>();
  try {
    const doc = JSON.parse(await readFile(join(dir, CHUNK_INDEX), 'utf8')) as { chunkBytes?: unknown; chunks?: Record<string, unknown> };
    if (doc.chunkBytes !== MEMORY_CHUNK_BYTES || typeof doc.chunks !== 'object' || doc.chunks === null) return index;
    for (const [offset, digest] of Object.entries(doc.chunks)) {
      const at = Number(offset);
      if (Number.isSafeInteger(at) && at % MEMORY_CHUNK_BYTES === 0 && typeof digest === 'string' && DIGEST.test(digest)) index.set(at, digest);
    }
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

/** Digests of the chunks the ancestors of `record` on this host have indexed (nearest ancestor first). */
export async function ancestorChunks(ctx: Pick<EngineContext, 'paths' | 'stores'>, record: Pick<SnapshotRecord, 'parentSnapshot' | 'spec'>): Promise<Map<string, LocalChunk>> {
  const found = new Map<string, LocalChunk>();
  let id = record.parentSnapshot;
  for (let depth = 0; id && depth < MAX_ANCESTORS; depth++) {
    const ancestor = ctx.stores.snapshots.getAny(id);
    if (!ancestor || ancestor.spec.memoryMib !== record.spec.memoryMib) break;
    const dir = ctx.paths.snapshotDir(ancestor.id);
    for (const [offset, digest] of await readChunkIndex(dir)) if (!found.has(digest)) found.set(digest, { path: join(dir, 'memory'), offset });
    id = ancestor.parentSnapshot;
  }
  return found;
}
