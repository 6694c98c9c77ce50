import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { assertCompatible, type CompatKey, type SnapshotRecord } from '../domain/snapshot.js';
import { archivedParent, MAX_ARCHIVE_META_BYTES, parseArchiveMeta, SNAPSHOT_ARCHIVE_FORMAT } from '../domain/snapshot-archive.js';
import {
  ArtifactTypes,
  checkMemoryLayout,
  layersOf,
  MEMORY_CHUNK_BYTES,
  OCI_MANIFEST,
  OFFSET_ANNOTATION,
  PAGE_BYTES,
  PAGE_RECORD_BYTES,
  pageOffset,
  parseSnapshotManifest,
  snapshotManifest,
  type Descriptor,
  type SnapshotArtifact,
} from '../domain/snapshot-artifact.js';
import { fileDigest, sha256Digest } from '../image/digest.js';
import { formatReference, manifestSelector, parseReference } from '../image/reference.js';
import { RegistryClient } from '../image/registry/client.js';
import { findCredential } from '../image/registry/credentials.js';
import { downloadBlob } from '../image/registry/blob-download.js';
import { uploadBlob } from '../image/push.js';
import { limitConcurrency } from '../image/limit.js';
import { explainNoSpace } from '../image/free-space.js';
import { BlobStore } from '../store/blob-store.js';
import type { EngineContext } from './context.js';
import { adoptStagedSnapshot, flattenDisk } from './snapshot-archive.js';
import { ancestorChunks, writeBlobIndex, type LocalChunk } from './blob-index.js';
import { assembleDisk, diskForPush, diskLayersOf, localDiskBase } from './disk-layers.js';

/**
 * `cell snapshot push` and `pull`: a snapshot as an OCI artifact in a registry
 * (domain/snapshot-artifact.ts, docs/snapshot-artifacts.md). Push sends only the blobs the
 * registry lacks (a HEAD for each first), so a child pushed after its parent sends the RAM chunks
 * that changed and its disk. Pull reads the manifest and config, refuses a snapshot this host
 * cannot restore before any RAM is fetched, downloads every blob with its digest checked (resumed
 * where a connection broke, into a store of its own under snapshots/.blobs), assembles the files
 * and adopts them as an import does.
 */
/** Bytes of the snapshot's blobs dealt with so far (sent, found at the registry, or fetched), of all. */
export type TransferProgress = (done: number, total: number) => void;

export interface RegistryAccess {
  credentialsPath: string;
  insecureRegistries: string[];
}

export interface PushResult {
  reference: string;
  digest: string;
  /** Blobs sent, and blobs the registry had already. */
  uploaded: { blobs: number; bytes: number };
  existing: { blobs: number; bytes: number };
  /** The manifest's size (an index that lists it needs it). */
  manifestBytes: number;
}

/** A client for `registry` with `cell login`'s credentials for it. */
export async function clientFor(registry: string, access: RegistryAccess): Promise<RegistryClient> {
  const credential = await findCredential(registry, { credentialsPath: access.credentialsPath });
  return new RegistryClient({ registry, ...(credential ? { credential } : {}), insecureRegistries: access.insecureRegistries });
}

/** A blob to push: a whole file or a range of one, its digest computed from the bytes. */
interface Source {
  desc: Descriptor;
  path: string;
  start: number;
}

/** Whether the registry has a blob: asked once per digest, remembered for the rest of the push. */
type RegistryHas = (digest: string) => Promise<boolean>;

function registryHas(client: RegistryClient, repository: string): RegistryHas {
  const known = new Map<string, boolean>();
  return async (digest) => {
    let found = known.get(digest);
    if (found === undefined) {
      found = (await client.headBlob(repository, digest, [`repository:${repository}:pull,push`])) !== undefined;
      known.set(digest, found);
    }
    return found;
  };
}

/** Blobs sent or fetched at once. */
const TRANSFERS = 4;

/** One source per digest: a chunk two places share is sent once. */
function unique(sources: Source[]): Source[] {
  const seen = new Set<string>();
  return sources.filter((s) => !seen.has(s.desc.digest) && seen.add(s.desc.digest));
}

/** How deep push looks for an ancestor whose chunks the registry has. */
const MAX_ANCESTORS = 4;

/**
 * The RAM file as layers: each chunk that holds anything but zeros, as itself; or, when the
 * registry lacks it but has the chunk an ancestor snapshot had at that place and fewer than half
 * its pages differ, as that ancestor's chunk plus the differing pages (written to `pagesPath`).
 */
async function memoryLayers(
  has: RegistryHas,
  path: string,
  bytes: number,
  ancestors: readonly string[],
  pagesPath: string,
  workDir: string,
): Promise<{ chunks: Source[]; pages: number; own: Map<number, string> }> {
  const chunks: Source[] = [];
  const digests = new Map<number, string>();
  let pages = 0;
  const files = await Promise.all([path, ...ancestors].map((p) => open(p, 'r')));
  const out = await open(pagesPath, 'w', 0o600);
  try {
    const own = Buffer.alloc(MEMORY_CHUNK_BYTES);
    const theirs = Buffer.alloc(MEMORY_CHUNK_BYTES);
    const record = Buffer.alloc(8);
    for (let offset = 0; offset < bytes; offset += MEMORY_CHUNK_BYTES) {
      const size = Math.min(MEMORY_CHUNK_BYTES, bytes - offset);
      const { bytesRead } = await files[0]!.read(own, 0, size, offset);
      if (bytesRead !== size) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `the snapshot's RAM file ended at ${offset + bytesRead} of ${bytes} bytes`);
      const chunk = own.subarray(0, size);
      if (isZero(chunk)) continue;
      const packed = packChunk(chunk);
      const digest = sha256Digest(packed);
      digests.set(offset, digest);
      const desc = (d: Descriptor['digest'], packedSize: number): Descriptor => ({ mediaType: ArtifactTypes.MEMORY, digest: d, size: packedSize, annotations: { [OFFSET_ANNOTATION]: String(offset) } });
      let based = false;
      if (!(await has(digest))) {
        for (let a = 1; a < files.length && !based; a++) {
          const read = await files[a]!.read(theirs, 0, size, offset);
          const base = theirs.subarray(0, size);
          if (read.bytesRead !== size || isZero(base)) continue;
          const basePacked = packChunk(base);
          const baseDigest = sha256Digest(basePacked);
          if (!(await has(baseDigest))) continue;
          const differing: number[] = [];
          for (let p = 0; p < size; p += PAGE_BYTES) if (!chunk.subarray(p, p + PAGE_BYTES).equals(base.subarray(p, p + PAGE_BYTES))) differing.push(p);
          if (differing.length * PAGE_RECORD_BYTES > size / 2) continue;
          for (const p of differing) {
            record.writeBigUInt64LE(BigInt(offset + p));
            await out.write(record);
            await out.write(chunk.subarray(p, p + PAGE_BYTES));
          }
          pages += differing.length;
          // The registry has it (just asked): nothing of it is read again.
          chunks.push({ desc: desc(baseDigest, basePacked.length), path: '', start: 0 });
          based = true;
        }
      }
      if (!based) {
        const file = join(workDir, `chunk-${offset}`);
        await writeFile(file, packed);
        chunks.push({ desc: desc(digest, packed.length), path: file, start: 0 });
      }
    }
  } finally {
    await out.close();
    for (const f of files) await f.close();
  }
  return { chunks, pages, own: digests };
}

/**
 * A RAM chunk as it is stored: gzip at level 1 (a guest's RAM is mostly page tables, code and
 * zero-filled pages inside used chunks: measured, the base snapshot of the tests 99 -> ~40 MiB),
 * deterministic for one zlib, so equal chunks still have equal digests.
 */
function packChunk(chunk: Buffer): Buffer {
  return gzipSync(chunk, { level: 1 });
}

/** A stored chunk unpacked, refused unless it is exactly `size` bytes (no gzip bomb gets further). */
function unpackChunk(packed: Buffer, size: number, what: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = gunzipSync(packed, { maxOutputLength: size });
  } catch (err) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} does not unpack to ${size} bytes: ${(err as Error).message}`);
  }
  if (bytes.length !== size) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} unpacks to ${bytes.length} bytes, not ${size}`);
  return bytes;
}

function isZero(buf: Buffer): boolean {
  // Compare 8 bytes at a time; a RAM file is mostly pages the guest never touched.
  const words = new BigUint64Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 8));
  for (const w of words) if (w !== 0n) return false;
  for (let i = words.length * 8; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

async function fileSource(path: string, mediaType: string): Promise<Source> {
  return { desc: { mediaType, digest: await fileDigest(path), size: (await stat(path)).size }, path, start: 0 };
}

async function pushBlob(client: RegistryClient, has: RegistryHas, repository: string, source: Source, result: PushResult): Promise<void> {
  const { desc } = source;
  if (await has(desc.digest)) {
    result.existing.blobs++;
    result.existing.bytes += desc.size;
    return;
  }
  await uploadBlob(client, repository, desc.digest, desc.size, () => createReadStream(source.path, { start: source.start, end: source.start + desc.size - 1 }));
  result.uploaded.blobs++;
  result.uploaded.bytes += desc.size;
}

/** The RAM files of the snapshot's ancestors (nearest first) of the same size, to base its chunks on. */
function ancestorMemories(ctx: Pick<EngineContext, 'paths' | 'stores'>, snapshot: SnapshotRecord): string[] {
  const found: string[] = [];
  for (let id = snapshot.parentSnapshot; id && found.length < MAX_ANCESTORS; ) {
    const parent = ctx.stores.snapshots.getAny(id);
    if (!parent || parent.spec.memoryMib !== snapshot.spec.memoryMib) break;
    found.push(join(ctx.paths.snapshotDir(parent.id), 'memory'));
    id = parent.parentSnapshot;
  }
  return found;
}

export async function pushSnapshot(
  ctx: Pick<EngineContext, 'paths' | 'stores'>,
  snapshot: SnapshotRecord,
  reference: string,
  access: RegistryAccess,
  onProgress: TransferProgress = () => {},
  opts: { untagged?: boolean } = {},
): Promise<PushResult> {
  const target = parseReference(reference);
  if (target.digest) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `push to a tag, not a digest: ${reference}`);
  // A part of a template: stored under its digest only (the template's index holds it).
  if (opts.untagged) delete target.tag;
  const src = ctx.paths.snapshotDir(snapshot.id);
  // The disks flattened as an export does, staged in celld's own folder (swept at start-up if celld dies here).
  const work = await mkdtemp(join(ctx.paths.snapshots, '.push-'));
  try {
    const hasData = (snapshot.spec.dataDiskMib ?? 0) > 0;
    if (hasData) await flattenDisk(join(src, 'data.qcow2'), join(work, 'data.qcow2'), 'the data disk layer');
    const config = Buffer.from(JSON.stringify({ format: SNAPSHOT_ARCHIVE_FORMAT, snapshot }));
    await writeFile(join(work, 'config.json'), config);
    const memoryBytes = snapshot.spec.memoryMib * 1024 * 1024;
    const client = await clientFor(target.registry, access);
    const has = registryHas(client, target.repository);
    const pagesPath = join(work, 'pages');
    const memory = await memoryLayers(has, join(src, 'memory'), memoryBytes, ancestorMemories(ctx, snapshot), pagesPath, work);
    // A delta over its parent's disk when the registry has that one, else the whole disk.
    const disk = await diskForPush(ctx, snapshot, work, has);
    const [diskBase, ...diskDeltas] = disk.layers.map((l): Source => ({ desc: l.desc, path: l.path, start: 0 }));
    const sources = {
      config: await fileSource(join(work, 'config.json'), ArtifactTypes.CONFIG),
      state: await fileSource(join(src, 'state'), ArtifactTypes.STATE),
      disk: diskBase!,
      diskDeltas,
      dataDisk: hasData ? await fileSource(join(work, 'data.qcow2'), ArtifactTypes.DATA_DISK) : undefined,
      memory: memory.chunks,
      pages: memory.pages > 0 ? await fileSource(pagesPath, ArtifactTypes.MEMORY_PAGES) : undefined,
    };
    const result: PushResult = { reference: formatReference(target), digest: '', uploaded: { blobs: 0, bytes: 0 }, existing: { blobs: 0, bytes: 0 }, manifestBytes: 0 };
    // A few uploads at once (most are 4 MiB chunks: round trips, not bandwidth); the config last.
    const slot = limitConcurrency(TRANSFERS);
    const layers = unique([sources.state, sources.disk, ...sources.diskDeltas, ...(sources.dataDisk ? [sources.dataDisk] : []), ...sources.memory, ...(sources.pages ? [sources.pages] : [])]);
    const total = [...layers, sources.config].reduce((n, s) => n + s.desc.size, 0);
    let done = 0;
    const counted = async (s: Source) => {
      await pushBlob(client, has, target.repository, s, result);
      onProgress((done += s.desc.size), total);
    };
    onProgress(0, total);
    await Promise.all(layers.map((s) => slot(() => counted(s))));
    await counted(sources.config);
    const artifact: SnapshotArtifact = {
      config: sources.config.desc,
      state: sources.state.desc,
      disk: sources.disk.desc,
      diskDeltas: sources.diskDeltas.map((d) => d.desc),
      ...(sources.dataDisk ? { dataDisk: sources.dataDisk.desc } : {}),
      memory: sources.memory.map((m) => ({ offset: m.start, desc: m.desc })),
      ...(sources.pages ? { pages: sources.pages.desc } : {}),
    };
    const manifest = snapshotManifest(artifact, {
      'org.opencontainers.image.created': snapshot.createdAt,
      'org.opencontainers.image.title': snapshot.name,
      'dev.cellvm.snapshot.id': snapshot.id,
    });
    const digest = await client.putManifest(target.repository, target.tag ?? sha256Digest(manifest), manifest, OCI_MANIFEST);
    result.digest = digest;
    result.manifestBytes = manifest.length;
    if (!target.tag) result.reference = formatReference({ ...target, digest });
    // What its parts are called at registries: a child pushed later sends its disk as a delta over
    // these layers, and a child pulled here later takes its chunks from this RAM file.
    await writeBlobIndex(src, { chunks: memory.own, disk: disk.index }).catch(() => {});
    return result;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Blobs of a pull fetched from the registry, and RAM chunks taken from snapshots here. */
export interface PullTransfer {
  fetched: { blobs: number; bytes: number };
  reused: { blobs: number; bytes: number };
}

/**
 * Stores in the pull's blob store each RAM chunk of `artifact` that an ancestor here has under the
 * same digest, packed again from the ancestor's RAM file (the store refuses it unless it is exactly
 * that digest, so a stale index costs a fetch, never a wrong chunk). Returns the digests stored.
 */
async function takeLocalChunks(store: BlobStore, artifact: SnapshotArtifact, local: ReadonlyMap<string, LocalChunk>, memoryBytes: number): Promise<Set<string>> {
  const taken = new Set<string>();
  if (local.size === 0) return taken;
  const buf = Buffer.alloc(MEMORY_CHUNK_BYTES);
  for (const { offset, desc } of artifact.memory) {
    const here = local.get(desc.digest);
    if (!here || taken.has(desc.digest)) continue;
    if (await store.has(desc.digest, desc.size)) continue;
    const size = Math.min(MEMORY_CHUNK_BYTES, memoryBytes - offset);
    try {
      const file = await open(here.path, 'r');
      try {
        const { bytesRead } = await file.read(buf, 0, size, here.offset);
        if (bytesRead !== size) continue;
      } finally {
        await file.close();
      }
      await store.put(packChunk(buf.subarray(0, size)), { digest: desc.digest, size: desc.size, what: `the RAM chunk at ${offset}` });
      taken.add(desc.digest);
    } catch {
      // Gone meanwhile, or not the same bytes after all: fetched as any other.
    }
  }
  return taken;
}

export async function pullSnapshot(
  ctx: Pick<EngineContext, 'paths' | 'db' | 'stores' | 'checkpoint'>,
  reference: string,
  host: CompatKey,
  access: RegistryAccess,
  name?: string,
  onProgress: TransferProgress = () => {},
  onTransfer: (summary: PullTransfer) => void = () => {},
): Promise<SnapshotRecord> {
  const source = parseReference(reference);
  const what = formatReference(source);
  const client = await clientFor(source.registry, access);
  const fetched = await client.getManifest(source.repository, manifestSelector(source));
  const artifact = parseSnapshotManifest(fetched.bytes, what);
  const store = new BlobStore(join(ctx.paths.snapshots, '.blobs'));
  const fetch = (desc: Descriptor, part: string) => downloadBlob(client, source.repository, desc, store, { what: `${what} ${part}`, maxBytes: desc.size });

  // The metadata and the compatibility key first: an unusable snapshot costs one small blob.
  if (artifact.config.size > MAX_ARCHIVE_META_BYTES) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: its config is too large`);
  const configText = await readFile(await fetch(artifact.config, 'config'), 'utf8');
  const meta = parseArchiveMeta(what, configText, name);
  const memoryParent = archivedParent(configText);
  assertCompatible(meta.compat, host, what);
  const memoryBytes = meta.spec.memoryMib * 1024 * 1024;
  checkMemoryLayout(artifact, memoryBytes, what);
  const here = ctx.stores.snapshots.get(meta.id);
  if (here) {
    // Pulled (or imported, or taken) before: nothing to fetch; the reference now names it.
    ctx.stores.snapshots.recordSource(what, here.id);
    return here;
  }
  if (ctx.stores.snapshots.getAny(meta.id)) throw new CellError(ErrorCodes.CONFLICT, `snapshot ${meta.id.slice(0, 12)} (${what}) was removed here but is still held; pull it once it is gone`);

  const staging = join(ctx.paths.snapshots, `.pull-${process.pid}-${Date.now()}`);
  const blobs = [artifact.config, ...layersOf(artifact)];
  await mkdir(staging, { recursive: true });
  let record: SnapshotRecord;
  try {
    // Everything fetched first, a few at once (each checked against its digest as it arrives).
    const slot = limitConcurrency(TRANSFERS);
    // The disk layers an ancestor here already is (a child pulled after its parent): not fetched.
    const diskLayers = diskLayersOf(artifact);
    const diskBase = await localDiskBase(ctx, memoryParent, diskLayers);
    const haveDisk = new Set(diskLayers.slice(0, diskBase?.count ?? 0).map((l) => l.digest));
    const all = [...new Map(blobs.map((b) => [b.digest, b])).values()];
    const distinct = all.filter((b) => !haveDisk.has(b.digest));
    const total = distinct.reduce((n, d) => n + d.size, 0);
    // RAM chunks an ancestor here has: taken from its RAM file.
    const reused = await takeLocalChunks(store, artifact, await ancestorChunks(ctx, { parentSnapshot: memoryParent, spec: meta.spec }), memoryBytes);
    const chunkBytes = distinct.filter((d) => reused.has(d.digest)).reduce((n, d) => n + d.size, 0);
    const diskBytes = all.filter((b) => haveDisk.has(b.digest)).reduce((n, d) => n + d.size, 0);
    onTransfer({ fetched: { blobs: distinct.length - reused.size, bytes: total - chunkBytes }, reused: { blobs: reused.size + haveDisk.size, bytes: chunkBytes + diskBytes } });
    let done = 0;
    const fetched = new Map<string, string>();
    onProgress(0, total);
    await Promise.all(
      distinct.map((desc) =>
        slot(async () => {
          fetched.set(desc.digest, await fetch(desc, desc === artifact.pages ? 'RAM pages' : desc.mediaType === ArtifactTypes.MEMORY ? 'RAM chunk' : desc.mediaType));
          onProgress((done += desc.size), total);
        }),
      ),
    );
    const local = (desc: Descriptor) => fetched.get(desc.digest)!;
    await copyFile(local(artifact.state), join(staging, 'state'));
    const deltas = diskLayers.slice(diskBase?.count ?? 1).map(local);
    await assembleDisk(what, diskBase ? { path: diskBase.path, fetched: false } : { path: local(artifact.disk), fetched: true }, deltas, staging, join(staging, 'disk.qcow2'));
    if (artifact.dataDisk) await copyFile(local(artifact.dataDisk), join(staging, 'data.qcow2'));
    // The RAM file: sparse, each chunk written at its place (zero chunks were never sent).
    const memory = await open(join(staging, 'memory'), 'wx', 0o600);
    const paged = new Set<number>();
    try {
      await memory.truncate(memoryBytes);
      for (const { offset, desc } of artifact.memory) {
        const bytes = unpackChunk(await readFile(local(desc)), Math.min(MEMORY_CHUNK_BYTES, memoryBytes - offset), `${what}: the RAM chunk at ${offset}`);
        await memory.write(bytes, 0, bytes.length, offset);
      }
      // Then the pages that differ from those chunks (a child's, whose chunks are its ancestor's).
      if (artifact.pages) {
        const records = await open(local(artifact.pages), 'r');
        try {
          const buf = Buffer.alloc(PAGE_RECORD_BYTES * 256);
          for (let at = 0; at < artifact.pages.size; ) {
            const { bytesRead } = await records.read(buf, 0, Math.min(buf.length, artifact.pages.size - at), at);
            if (bytesRead === 0 || bytesRead % PAGE_RECORD_BYTES !== 0) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what}: its pages layer ended early`);
            for (let r = 0; r < bytesRead; r += PAGE_RECORD_BYTES) {
              const offset = pageOffset(buf.subarray(r, r + 8), memoryBytes, what);
              await memory.write(buf, r + 8, PAGE_BYTES, offset);
              paged.add(offset - (offset % MEMORY_CHUNK_BYTES));
            }
            at += bytesRead;
          }
        } finally {
          await records.close();
        }
      }
      await memory.sync();
    } finally {
      await memory.close();
    }
    // The chunks that are as fetched, by digest: for a child of this one pulled later.
    await writeBlobIndex(staging, {
      chunks: new Map(artifact.memory.filter((m) => !paged.has(m.offset)).map((m) => [m.offset, m.desc.digest])),
      disk: diskLayers.map((l) => ({ digest: l.digest, size: l.size })),
    });
    await ctx.checkpoint('snapshot-pull:assembled');
    record = await adoptStagedSnapshot(ctx, staging, what, meta, memoryParent, (r) => ctx.stores.snapshots.recordSource(what, r.id));
  } catch (err) {
    // What was fetched stays in the store: pulling again resumes from there.
    throw await explainNoSpace(err, ctx.paths.snapshots, `pulling ${what} stopped`);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  // Adopted: its files are the snapshot's now, the fetched blobs are copies.
  for (const desc of blobs) await store.delete(desc.digest).catch(() => false);
  return record;
}
