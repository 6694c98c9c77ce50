import { CellError, ErrorCodes } from './errors.js';

/**
 * A snapshot as an OCI artifact (docs/snapshot-artifacts.md): a standard OCI image manifest with
 * cellvm's artifactType, whose config blob is the snapshot's metadata (the same document as a
 * snapshot archive's snapshot.json, plus the RAM size) and whose layers are the device state, the
 * flattened disks and the RAM in fixed-size chunks, each chunk's place in the RAM file in an
 * annotation. All-zero chunks are not stored (the RAM file is sparse). Equal chunks have equal
 * digests, so a registry that holds a snapshot's chunks skips them when a child is pushed; a
 * child's chunk that differs from its ancestor's in a few pages is sent as the ancestor's chunk
 * (which the registry has) plus those pages, in one pages layer written over the chunks.
 *
 * Everything in a pulled manifest is checked here before a byte of RAM is fetched: a registry, or
 * whoever wrote to it, is not trusted.
 */
export const ArtifactTypes = {
  SNAPSHOT: 'application/vnd.cellvm.snapshot.v1',
  CONFIG: 'application/vnd.cellvm.snapshot.config.v1+json',
  STATE: 'application/vnd.cellvm.snapshot.state.v1',
  DISK: 'application/vnd.cellvm.snapshot.disk.v1+qcow2',
  DATA_DISK: 'application/vnd.cellvm.snapshot.data-disk.v1+qcow2',
  /** What a child's disk changed over the disk before it in the list: a qcow2 whose backing file is left out. */
  DISK_DELTA: 'application/vnd.cellvm.snapshot.disk-delta.v1+qcow2',
  /** A chunk of RAM, gzipped. */
  MEMORY: 'application/vnd.cellvm.snapshot.memory.v1+gzip',
  /** Pages that differ from the chunks listed (records of a u64 LE offset and a 4 KiB page). */
  MEMORY_PAGES: 'application/vnd.cellvm.snapshot.memory-pages.v1',
} as const;

export const PAGE_BYTES = 4096;
/** One record of a pages layer: where (u64 LE), then the page. */
export const PAGE_RECORD_BYTES = 8 + PAGE_BYTES;

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
/** The annotation on a RAM chunk: its byte offset in the RAM file. */
export const OFFSET_ANNOTATION = 'dev.cellvm.memory.offset';
/** Disk deltas one artifact may list (a build of more steps than this flattens its disk). */
export const MAX_DISK_DELTAS = 32;
/** 4 MiB: a 256 MiB guest is 64 chunks; a child that changed 1% of its pages re-sends few. */
export const MEMORY_CHUNK_BYTES = 4 * 1024 * 1024;
/** A manifest of a 64 GiB guest (16384 chunks) stays under a megabyte of JSON. */
export const MAX_MEMORY_CHUNKS = 16384;
/** gzip of 4 MiB that does not compress: a little over 4 MiB. */
const MAX_PACKED_CHUNK_BYTES = MEMORY_CHUNK_BYTES + 64 * 1024;
const MAX_DISK_BYTES = 1024 ** 4;
const MAX_STATE_BYTES = 256 * 1024 * 1024;
const MAX_CONFIG_BYTES = 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: `sha256:${string}`;
  size: number;
  annotations?: Record<string, string>;
}

export interface SnapshotArtifact {
  config: Descriptor;
  state: Descriptor;
  /** A standalone qcow2: the whole disk, or the base the deltas apply to. */
  disk: Descriptor;
  /** In order, each over the disk before it: a child pushed after its parent sends only its own. */
  diskDeltas: Descriptor[];
  dataDisk?: Descriptor;
  /** In offset order; offsets are distinct multiples of MEMORY_CHUNK_BYTES. */
  memory: { offset: number; desc: Descriptor }[];
  /** Written over the chunks: a child's pages that differ from the ancestor chunks it lists. */
  pages?: Descriptor;
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

function bad(what: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not a usable cellvm snapshot: ${why}`);
}

function descriptor(what: string, raw: unknown, maxBytes: number): Descriptor {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(what, 'a descriptor is not an object');
  const d = raw as Record<string, unknown>;
  if (typeof d.mediaType !== 'string' || d.mediaType.length > 256) throw bad(what, 'a descriptor has no media type');
  if (typeof d.digest !== 'string' || !DIGEST.test(d.digest)) throw bad(what, `a descriptor's digest is not sha256:<64 hex>`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0 || d.size > maxBytes) throw bad(what, `blob ${d.digest} declares ${String(d.size)} bytes (at most ${maxBytes})`);
  const out: Descriptor = { mediaType: d.mediaType, digest: d.digest as Descriptor['digest'], size: d.size };
  if (d.annotations !== undefined) {
    if (typeof d.annotations !== 'object' || d.annotations === null || Array.isArray(d.annotations)) throw bad(what, 'annotations are not an object');
    const entries = Object.entries(d.annotations as Record<string, unknown>);
    if (entries.length > 64 || !entries.every(([k, v]) => typeof v === 'string' && k.length <= 256 && v.length <= 4096)) throw bad(what, 'annotations are not short strings');
    out.annotations = Object.fromEntries(entries) as Record<string, string>;
  }
  return out;
}

/**
 * The parts of a pulled manifest, checked: cellvm's artifact type and config, one state, one disk,
 * at most one data disk, RAM chunks at distinct aligned offsets inside `memoryBytes` (known only
 * from the config: `checkMemoryLayout` checks that part once it is read), nothing else.
 */
export function parseSnapshotManifest(bytes: Buffer, what: string): SnapshotArtifact {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad(what, 'its manifest is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw bad(what, 'its manifest is not a JSON object');
  if (doc.artifactType !== ArtifactTypes.SNAPSHOT) {
    // A template's index (domain/template-artifact.ts) lists snapshots but is not one.
    const hint = doc.artifactType === 'application/vnd.cellvm.template.v1' ? 'pull it with cell template pull' : 'pull an image with cell pull';
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not a cellvm snapshot (artifact type ${JSON.stringify(doc.artifactType ?? null)?.slice(0, 80)}): ${hint}`);
  }
  if (doc.schemaVersion !== 2 || doc.mediaType !== OCI_MANIFEST) throw bad(what, 'its manifest is not an OCI image manifest');
  const config = descriptor(what, doc.config, MAX_CONFIG_BYTES);
  if (config.mediaType !== ArtifactTypes.CONFIG) throw bad(what, `its config is ${config.mediaType}, not ${ArtifactTypes.CONFIG}`);
  if (!Array.isArray(doc.layers) || doc.layers.length > MAX_MEMORY_CHUNKS + 4) throw bad(what, 'its layers are missing or too many');
  let state: Descriptor | undefined;
  let disk: Descriptor | undefined;
  let dataDisk: Descriptor | undefined;
  let pages: Descriptor | undefined;
  const diskDeltas: Descriptor[] = [];
  const memory: SnapshotArtifact['memory'] = [];
  const offsets = new Set<number>();
  for (const raw of doc.layers) {
    const d = descriptor(what, raw, MAX_DISK_BYTES);
    const once = (had: Descriptor | undefined, name: string) => {
      if (had) throw bad(what, `it has two ${name} layers`);
      return d;
    };
    if (d.mediaType === ArtifactTypes.STATE) {
      if (d.size > MAX_STATE_BYTES) throw bad(what, `its device state is ${d.size} bytes (at most ${MAX_STATE_BYTES})`);
      state = once(state, 'device state');
    } else if (d.mediaType === ArtifactTypes.DISK) disk = once(disk, 'disk');
    else if (d.mediaType === ArtifactTypes.DATA_DISK) dataDisk = once(dataDisk, 'data disk');
    else if (d.mediaType === ArtifactTypes.DISK_DELTA) {
      if (diskDeltas.length >= MAX_DISK_DELTAS) throw bad(what, `it has more than ${MAX_DISK_DELTAS} disk deltas`);
      diskDeltas.push(d);
    }
    else if (d.mediaType === ArtifactTypes.MEMORY_PAGES) {
      if (d.size % PAGE_RECORD_BYTES !== 0) throw bad(what, `its pages layer is ${d.size} bytes, not whole records of ${PAGE_RECORD_BYTES}`);
      pages = once(pages, 'pages');
    }
    else if (d.mediaType === ArtifactTypes.MEMORY) {
      const text = d.annotations?.[OFFSET_ANNOTATION];
      const offset = text !== undefined && /^\d{1,15}$/.test(text) ? Number(text) : NaN;
      if (!Number.isSafeInteger(offset) || offset % MEMORY_CHUNK_BYTES !== 0) throw bad(what, `a RAM chunk's offset ${JSON.stringify(text ?? null)} is not a multiple of ${MEMORY_CHUNK_BYTES}`);
      if (offsets.has(offset)) throw bad(what, `two RAM chunks at offset ${offset}`);
      if (d.size === 0 || d.size > MAX_PACKED_CHUNK_BYTES) throw bad(what, `a RAM chunk is ${d.size} bytes (1 to ${MAX_PACKED_CHUNK_BYTES})`);
      offsets.add(offset);
      memory.push({ offset, desc: d });
    } else throw bad(what, `it has a layer of unknown type ${d.mediaType}`);
  }
  if (!state || !disk) throw bad(what, 'its device state or disk is missing');
  memory.sort((a, b) => a.offset - b.offset);
  return { config, state, disk, diskDeltas, ...(dataDisk ? { dataDisk } : {}), memory, ...(pages ? { pages } : {}) };
}

/** Every RAM chunk inside a RAM file of `memoryBytes` (each unpacks to its whole chunk, the last maybe shorter: checked as it is unpacked). */
export function checkMemoryLayout(artifact: SnapshotArtifact, memoryBytes: number, what: string): void {
  for (const { offset } of artifact.memory) {
    if (offset >= memoryBytes) throw bad(what, `a RAM chunk at ${offset} lies past its ${memoryBytes} bytes of RAM`);
  }
  if (artifact.pages && artifact.pages.size / PAGE_RECORD_BYTES > memoryBytes / PAGE_BYTES) throw bad(what, `its pages layer holds more pages than ${memoryBytes} bytes of RAM`);
}

/** A page record's offset, checked: page-aligned, inside the RAM. */
export function pageOffset(record: Buffer, memoryBytes: number, what: string): number {
  const offset = record.readBigUInt64LE(0);
  if (offset % BigInt(PAGE_BYTES) !== 0n || offset + BigInt(PAGE_BYTES) > BigInt(memoryBytes)) throw bad(what, `a page at ${offset} is not a page of its ${memoryBytes} bytes of RAM`);
  return Number(offset);
}

/** The artifact's layers in manifest order: state, disk, its deltas in order, data disk, RAM chunks, pages. */
export function layersOf(artifact: SnapshotArtifact): Descriptor[] {
  return [
    artifact.state,
    artifact.disk,
    ...artifact.diskDeltas,
    ...(artifact.dataDisk ? [artifact.dataDisk] : []),
    ...artifact.memory.map((m) => m.desc),
    ...(artifact.pages ? [artifact.pages] : []),
  ];
}

/** The manifest of a snapshot's blobs (what push sends). */
export function snapshotManifest(artifact: SnapshotArtifact, annotations: Record<string, string>): Buffer {
  return Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, artifactType: ArtifactTypes.SNAPSHOT, config: artifact.config, layers: layersOf(artifact), annotations }),
  );
}
