import { CellError, ErrorCodes } from '../domain/errors.js';
import { checkDigest, type Digest } from './digest.js';
import { CONFIG_TYPES, IMAGE_MANIFEST_TYPES, INDEX_TYPES, isLayerType, MediaTypes, SCHEMA1_TYPES } from './media-types.js';
import { formatPlatform, platformMatches, type Platform } from './platform.js';

/**
 * Manifests and indexes, parsed from their exact bytes (the digest is over those bytes, so the
 * caller keeps them) and checked for the shape we rely on, so later code can trust the types.
 */
export interface Descriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  kind: 'manifest';
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageIndex {
  kind: 'index';
  mediaType: string;
  manifests: Descriptor[];
}

export type Manifest = ImageManifest | ImageIndex;

/** Registries and specs suggest 4 MiB as the most a manifest may be; more is an attack or a mistake. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/**
 * The most layers an image may have: each is a download and an unpack. Docker's overlay driver
 * stops at 128; a few thousand in a 4 MiB manifest would only be an attack.
 */
export const MAX_LAYERS = 1000;

function unsupported(what: string, why: string): CellError {
  return new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `${what}: ${why}`);
}

function malformed(what: string, why: string): CellError {
  return new CellError(ErrorCodes.REGISTRY_ERROR, `${what} is malformed: ${why}`);
}

function parseDescriptor(raw: unknown, what: string): Descriptor {
  if (typeof raw !== 'object' || raw === null) throw malformed(what, 'a descriptor is not an object');
  const d = raw as Record<string, unknown>;
  if (typeof d.mediaType !== 'string') throw malformed(what, 'a descriptor has no mediaType');
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw malformed(what, `descriptor ${String(d.digest)} has an invalid size`);
  const out: Descriptor = { mediaType: d.mediaType, digest: checkDigest(d.digest, what), size: d.size };
  const p = d.platform as Record<string, unknown> | undefined;
  if (p && typeof p === 'object' && typeof p.os === 'string' && typeof p.architecture === 'string') {
    out.platform = { os: p.os, architecture: p.architecture, ...(typeof p.variant === 'string' && p.variant ? { variant: p.variant } : {}) };
  }
  if (d.annotations !== undefined) {
    const a = d.annotations;
    // A map of strings (OCI image spec); later code uses the values as strings.
    if (typeof a !== 'object' || a === null || Array.isArray(a) || !Object.values(a).every((v) => typeof v === 'string')) {
      throw malformed(what, `descriptor ${out.digest} has annotations that are not a map of strings`);
    }
    out.annotations = a as Record<string, string>;
  }
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * The media type comes from the document's own `mediaType` field, else the response's
 * Content-Type, else its shape. Schema 1 and unknown types are refused with a clear error.
 */
export function parseManifest(bytes: Buffer, what: string, contentType?: string): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) throw new CellError(ErrorCodes.SIZE_LIMIT, `${what} is larger than ${MAX_MANIFEST_BYTES} bytes`);
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw malformed(what, 'it is not JSON');
  }
  if (!isObject(doc)) throw malformed(what, 'it is not a JSON object');
  if (doc.mediaType !== undefined && typeof doc.mediaType !== 'string') throw malformed(what, '"mediaType" is not a string');
  const headerType = contentType?.split(';')[0]?.trim();
  const ownType = typeof doc.mediaType === 'string' && doc.mediaType ? doc.mediaType : undefined;
  let mediaType = ownType;
  if (!mediaType && headerType && headerType !== 'application/json') mediaType = headerType;
  if (doc.schemaVersion === 1 || (mediaType && SCHEMA1_TYPES.includes(mediaType))) {
    throw unsupported(what, 'Docker image manifest schema 1 is not supported (deprecated since 2017); push the image again with a current client');
  }
  if (doc.schemaVersion !== undefined && doc.schemaVersion !== 2) throw malformed(what, `schemaVersion ${JSON.stringify(doc.schemaVersion)?.slice(0, 20)} is not 2`);
  // CVE-2021-41190: a document that reads as an image manifest and as an index could be taken
  // as one by cellvm and as the other by a tool that verified it. Neither reading is safe.
  if (doc.layers !== undefined && doc.manifests !== undefined) {
    throw unsupported(what, 'it has both "layers" and "manifests", so it is both a manifest and an index (ambiguous, CVE-2021-41190): refused');
  }
  // The same ambiguity between the document's own type and the one it was served (or listed) as.
  if (ownType && headerType && kindOf(ownType) && kindOf(headerType) && kindOf(ownType) !== kindOf(headerType)) {
    throw unsupported(what, `it says it is ${ownType} but was served as ${headerType} (ambiguous, CVE-2021-41190): refused`);
  }
  if (!mediaType) {
    if (Array.isArray(doc.manifests)) mediaType = MediaTypes.OCI_INDEX;
    else if (Array.isArray(doc.layers)) mediaType = MediaTypes.OCI_MANIFEST;
    else throw unsupported(what, 'it has no media type and is neither a manifest nor an index');
  }

  if (INDEX_TYPES.includes(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw malformed(what, 'an index without "manifests"');
    if (doc.layers !== undefined || doc.config !== undefined) throw unsupported(what, 'an index with "layers" or "config" is ambiguous (CVE-2021-41190): refused');
    return { kind: 'index', mediaType, manifests: doc.manifests.map((m) => parseDescriptor(m, what)) };
  }
  if (IMAGE_MANIFEST_TYPES.includes(mediaType)) {
    if (!Array.isArray(doc.layers)) throw malformed(what, 'a manifest without "layers"');
    if (doc.layers.length > MAX_LAYERS) throw new CellError(ErrorCodes.SIZE_LIMIT, `${what} has ${doc.layers.length} layers, more than the ${MAX_LAYERS} allowed`);
    const config = parseDescriptor(doc.config, what);
    if (!CONFIG_TYPES.includes(config.mediaType)) {
      throw unsupported(what, `config type ${config.mediaType} is not a container image (an OCI artifact?)`);
    }
    const layers = doc.layers.map((l) => parseDescriptor(l, what));
    for (const l of layers) {
      if (!isLayerType(l.mediaType)) throw unsupported(what, `layer ${l.digest} has unsupported media type ${l.mediaType}`);
    }
    return { kind: 'manifest', mediaType, config, layers };
  }
  throw unsupported(what, `unsupported media type ${mediaType}`);
}

/** 'index' or 'manifest' for the media types of either, else undefined. */
function kindOf(mediaType: string): 'index' | 'manifest' | undefined {
  if (INDEX_TYPES.includes(mediaType)) return 'index';
  if (IMAGE_MANIFEST_TYPES.includes(mediaType)) return 'manifest';
  return undefined;
}

/** Picks the manifest for `wanted` from an index; the error lists what the index does offer. */
export function selectPlatform(index: ImageIndex, wanted: Platform, what: string): Descriptor {
  const candidates = index.manifests.filter((m) => IMAGE_MANIFEST_TYPES.includes(m.mediaType) || INDEX_TYPES.includes(m.mediaType));
  const match = candidates.find((m) => platformMatches(wanted, m.platform));
  if (match) return match;
  const offered = candidates
    .map((m) => m.platform)
    .filter((p): p is Platform => !!p && p.os !== 'unknown')
    .map(formatPlatform);
  throw new CellError(
    ErrorCodes.IMAGE_NOT_FOUND,
    `${what} has no image for platform ${formatPlatform(wanted)}${offered.length ? ` (it has: ${[...new Set(offered)].join(', ')})` : ''}`,
    { platforms: offered },
  );
}
