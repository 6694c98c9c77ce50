import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { Db } from '../../store/database.js';
import { BlobStore } from '../../store/blob-store.js';
import { ImagePins } from '../../store/image-pins.js';
import { checkDigest, digestHex, sha256Digest, type Digest } from '../digest.js';
import { installImage, type InstalledImage } from '../install.js';
import { MAX_LAYERS, parseManifest, selectPlatform, type Descriptor, type ImageManifest } from '../manifest.js';
import { MediaTypes } from '../media-types.js';
import { DEFAULT_PLATFORM, formatPlatform, parsePlatform, type Platform } from '../platform.js';
import { noCheckpoint, type Checkpoint, type PullProgressFn } from '../progress.js';
import { removeUnused } from '../pull.js';
import { formatReference, parseReference } from '../reference.js';
import { workDir } from '../store-layout.js';
import type { UnpackLimits } from '../unpack/apply-layer.js';
import { detectCompression } from '../unpack/decompress.js';
import { assertRoom, explainNoSpace } from '../free-space.js';
import { MAX_IMAGE_ARCHIVE_ENTRIES } from './archive-budget.js';
import { extractArchive, type ExtractedArchive } from './extract-archive.js';

/**
 * Imports an image archive so hosts without registry access can run images: an OCI layout
 * (`oci-layout` + `index.json` + `blobs/`, as `exportImage` and `skopeo copy oci-archive:` write)
 * or a `docker save` archive (`manifest.json` + config + layer tars), from which an OCI manifest
 * is made. Every blob is checked against its digest on the way into the store, and the result is
 * installed exactly like a pull (same blob store, same base disk, same records).
 */
export interface ImportOptions {
  /** The archive's path, as the user named it (for messages). */
  file: string;
  /** A path that reads the same file, when it is not `file` itself (celld opens a caller's file for them). */
  source?: string;
  storeRoot: string;
  db: Db;
  /** Name for the image; needed when the archive names none (or several). */
  reference?: string;
  platform?: string | Platform;
  limits?: Partial<UnpackLimits>;
  onProgress?: PullProgressFn;
  /** Crash-drill steps: image-import:extracted, image-import:stored, then installImage's. */
  checkpoint?: Checkpoint;
  /** The most bytes the archive's members may add up to (`importMaxBytes`); free space is checked regardless. */
  maxArchiveBytes?: number;
}

const OCI_NAME = 'io.containerd.image.name';
const OCI_REF = 'org.opencontainers.image.ref.name';

interface ImportPlan {
  reference: string;
  repoDigest: Digest | null;
  manifestDigest: Digest;
  manifest: ImageManifest;
  platform: string | null;
  /** Blobs to copy into the store: digest -> archive member. */
  members: Map<Digest, { name: string; size?: number }>;
  /** Documents made here (docker save), stored as they are. */
  made: Map<Digest, Buffer>;
}

export async function importArchive(opts: ImportOptions): Promise<InstalledImage> {
  const wanted = typeof opts.platform === 'string' ? parsePlatform(opts.platform) : (opts.platform ?? DEFAULT_PLATFORM);
  const checkpoint = opts.checkpoint ?? noCheckpoint;
  const archive = await extractArchive(opts.source ?? opts.file, workDir(opts.storeRoot), `archive ${opts.file}`, {
    maxEntries: MAX_IMAGE_ARCHIVE_ENTRIES,
    ...(opts.maxArchiveBytes !== undefined ? { maxBytes: opts.maxArchiveBytes } : {}),
  }).catch(async (err: unknown) => {
    throw await explainNoSpace(err, workDir(opts.storeRoot), `unpacking archive ${opts.file} stopped`);
  });
  const store = new BlobStore(opts.storeRoot);
  const added = new Set<string>();
  try {
    await checkpoint('image-import:extracted');
    const plan = archive.has('index.json') ? await planOciLayout(archive, opts, wanted) : await planDockerSave(archive, opts);
    for (const [digest, bytes] of plan.made) {
      if (!(await store.has(digest))) added.add(await store.put(bytes, { digest }));
    }
    // The extracted members are copied into the store: a second copy, which must fit too.
    let toStore = 0;
    for (const [digest, member] of plan.members) {
      if (await store.has(digest, member.size)) continue;
      // A member that is missing is reported below; its size is what its descriptor says, or its file's.
      const path = archive.path(member.name);
      toStore += member.size ?? (path ? (await stat(path)).size : 0);
    }
    await assertRoom(opts.storeRoot, toStore, `importing ${opts.file} (its blobs not stored yet)`);
    for (const [digest, member] of plan.members) {
      if (await store.has(digest, member.size)) continue;
      const path = archive.path(member.name);
      if (!path) throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `archive ${opts.file}: blob ${digest} (${member.name}) is missing`);
      await store.putFile(path, { digest, ...(member.size !== undefined ? { size: member.size } : {}), what: `${member.name} in ${opts.file}` });
      added.add(digest);
    }
    await checkpoint('image-import:stored');
    const blobs = [...plan.members.keys(), ...plan.made.keys()];
    return await installImage({
      storeRoot: opts.storeRoot,
      db: opts.db,
      reference: plan.reference,
      repoDigest: plan.repoDigest,
      manifestDigest: plan.manifestDigest,
      manifest: plan.manifest,
      configBytes: await store.read(plan.manifest.config.digest),
      platform: plan.platform,
      layerPaths: plan.manifest.layers.map((l) => store.path(l.digest)),
      blobs,
      ...(opts.limits ? { limits: opts.limits } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      checkpoint: (step) => checkpoint(`image-import:${step}`),
    });
  } catch (err) {
    await removeUnused(store, new ImagePins(opts.db), added);
    throw await explainNoSpace(err, opts.storeRoot, `importing ${opts.file} stopped`);
  } finally {
    await rm(archive.dir, { recursive: true, force: true });
  }
}

function blobName(digest: Digest): string {
  return `blobs/sha256/${digestHex(digest)}`;
}

async function readMember(archive: ExtractedArchive, name: string, file: string): Promise<Buffer> {
  const path = archive.path(name);
  if (!path) throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `archive ${file}: ${name} is missing`);
  return readFile(path);
}

async function readBlob(archive: ExtractedArchive, d: Descriptor, file: string): Promise<Buffer> {
  const bytes = await readMember(archive, blobName(d.digest), file);
  if (sha256Digest(bytes) !== d.digest || bytes.length !== d.size) {
    throw new CellError(ErrorCodes.DIGEST_MISMATCH, `archive ${file}: ${blobName(d.digest)} does not match its digest or size`);
  }
  return bytes;
}

function nameFor(opts: ImportOptions, candidates: string[], file: string): string {
  if (opts.reference) return formatReference(parseReference(opts.reference));
  const full = candidates.find((c) => c.includes('/') || c.includes(':'));
  if (full) return formatReference(parseReference(full));
  throw new CellError(ErrorCodes.INVALID_ARGUMENT, `archive ${file} does not name its image: give a reference to import it as`);
}

async function planOciLayout(archive: ExtractedArchive, opts: ImportOptions, wanted: Platform): Promise<ImportPlan> {
  const index = parseManifest(await readMember(archive, 'index.json', opts.file), `index.json of ${opts.file}`, MediaTypes.OCI_INDEX);
  if (index.kind !== 'index') throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `index.json of ${opts.file} is not an index`);
  let top: Descriptor | undefined = index.manifests[0];
  if (index.manifests.length > 1) {
    const wantedRef = opts.reference ? formatReference(parseReference(opts.reference)) : undefined;
    top = index.manifests.find((m) => {
      const names = [m.annotations?.[OCI_NAME], m.annotations?.[OCI_REF]].filter((n): n is string => !!n);
      return wantedRef && names.some((n) => n === opts.reference || safeFormat(n) === wantedRef);
    });
    if (!top) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `archive ${opts.file} holds ${index.manifests.length} images: name the one to import`);
  }
  if (!top) throw new CellError(ErrorCodes.IMAGE_NOT_FOUND, `archive ${opts.file} holds no image`);
  const reference = nameFor(opts, [top.annotations?.[OCI_NAME], top.annotations?.[OCI_REF]].filter((n): n is string => !!n), opts.file);
  const members = new Map<Digest, { name: string; size?: number }>();
  members.set(top.digest, { name: blobName(top.digest), size: top.size });
  let desc = top;
  let doc = parseManifest(await readBlob(archive, desc, opts.file), `manifest ${desc.digest} in ${opts.file}`, desc.mediaType);
  let platform: Platform | null = null;
  for (let depth = 0; doc.kind === 'index'; depth++) {
    if (depth > 2) throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `${opts.file}: indexes nested too deeply`);
    desc = selectPlatform(doc, wanted, `${opts.file}`);
    platform = desc.platform ?? null;
    members.set(desc.digest, { name: blobName(desc.digest), size: desc.size });
    doc = parseManifest(await readBlob(archive, desc, opts.file), `manifest ${desc.digest} in ${opts.file}`, desc.mediaType);
  }
  for (const d of [doc.config, ...doc.layers]) members.set(d.digest, { name: blobName(d.digest), size: d.size });
  return { reference, repoDigest: top.digest, manifestDigest: desc.digest, manifest: doc, platform: formatPlatform(platform ?? wanted), members, made: new Map() };
}

function safeFormat(name: string): string | undefined {
  try {
    return formatReference(parseReference(name));
  } catch {
    return undefined;
  }
}

export interface DockerSaveEntry {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
}

const LAYER_TYPE = { gzip: MediaTypes.OCI_LAYER_GZIP, zstd: MediaTypes.OCI_LAYER_ZSTD, none: MediaTypes.OCI_LAYER } as const;

/**
 * The `manifest.json` of a docker save archive: a non-empty array of { Config, RepoTags, Layers }
 * with the types they must have (the archive is input like any registry's). Throws a CellError.
 */
export function parseDockerSaveManifest(bytes: Buffer, what: string): DockerSaveEntry[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not valid JSON`);
  }
  if (!Array.isArray(doc) || doc.length === 0) throw new CellError(ErrorCodes.IMAGE_NOT_FOUND, `${what} lists no image`);
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string');
  return doc.map((e: unknown, i) => {
    const entry = e as Record<string, unknown>;
    if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: entry ${i} is not an object`);
    if (typeof entry.Config !== 'string' || !strings(entry.Layers)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: entry ${i} lacks Config or Layers (or they are not strings)`);
    if (entry.RepoTags !== undefined && entry.RepoTags !== null && !strings(entry.RepoTags)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: entry ${i} has RepoTags that are not strings`);
    }
    if ((entry.Layers as string[]).length > MAX_LAYERS) {
      throw new CellError(ErrorCodes.SIZE_LIMIT, `${what}: entry ${i} has ${(entry.Layers as string[]).length} layers, more than the ${MAX_LAYERS} allowed`);
    }
    return { Config: entry.Config, Layers: entry.Layers as string[], RepoTags: (entry.RepoTags as string[] | null | undefined) ?? null };
  });
}

async function planDockerSave(archive: ExtractedArchive, opts: ImportOptions): Promise<ImportPlan> {
  if (!archive.has('manifest.json')) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${opts.file} is neither an OCI layout (index.json) nor a docker save archive (manifest.json)`);
  }
  const entries = parseDockerSaveManifest(await readMember(archive, 'manifest.json', opts.file), `manifest.json of ${opts.file}`);
  let entry = entries[0]!;
  if (entries.length > 1) {
    const wantedRef = opts.reference ? formatReference(parseReference(opts.reference)) : undefined;
    const match = entries.find((e) => (e.RepoTags ?? []).some((t) => safeFormat(t) === wantedRef));
    if (!match) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `archive ${opts.file} holds ${entries.length} images: name the one to import`);
    entry = match;
  }
  const reference = nameFor(opts, entry.RepoTags ?? [], opts.file);
  const configBytes = await readMember(archive, entry.Config, opts.file);
  const configDigest = sha256Digest(configBytes);
  const members = new Map<Digest, { name: string; size?: number }>();
  members.set(configDigest, { name: entry.Config, size: configBytes.length });
  const layers: Descriptor[] = [];
  for (const name of entry.Layers) {
    const path = archive.path(name);
    if (!path) throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `archive ${opts.file}: layer ${name} is missing`);
    const digest = checkDigest(await sha256OfFile(path), name);
    const size = (await stat(path)).size;
    layers.push({ mediaType: LAYER_TYPE[await detectCompression(path, name)], digest, size });
    members.set(digest, { name, size });
  }
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.OCI_MANIFEST,
      config: { mediaType: MediaTypes.OCI_CONFIG, digest: configDigest, size: configBytes.length },
      layers,
    }),
  );
  const manifestDigest = sha256Digest(manifestBytes);
  const manifest = parseManifest(manifestBytes, `manifest made for ${opts.file}`) as ImageManifest;
  return { reference, repoDigest: null, manifestDigest, manifest, platform: null, members, made: new Map([[manifestDigest, manifestBytes]]) };
}

async function sha256OfFile(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}
