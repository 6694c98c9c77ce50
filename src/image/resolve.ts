import { CellError, ErrorCodes } from '../domain/errors.js';
import type { BlobStore } from '../store/blob-store.js';
import type { Digest } from './digest.js';
import { parseManifest, selectPlatform, type ImageManifest } from './manifest.js';
import { formatPlatform, type Platform } from './platform.js';
import { formatReference, manifestSelector, type ImageReference } from './reference.js';
import type { RegistryClient } from './registry/client.js';

/**
 * Turns a reference into one image manifest for a platform: tag -> (index ->) manifest. Manifests
 * already in the blob store are read from there (a HEAD tells a tag's digest), so pulling an image
 * we have costs one HEAD request. Every manifest fetched is checked against its digest.
 */
export interface ResolvedImage {
  /** What the reference names in the registry: an index or the manifest itself. */
  repoDigest: Digest;
  manifestDigest: Digest;
  manifest: ImageManifest;
  /** Manifest documents to keep in the blob store (index and manifest), by digest. */
  documents: Map<Digest, Buffer>;
  /** The platform the index listed for the chosen manifest (null for a single manifest). */
  platform: Platform | null;
}

async function fetchDocument(client: RegistryClient, store: BlobStore, repository: string, selector: string, digest: Digest | undefined): Promise<{ bytes: Buffer; digest: Digest; contentType?: string }> {
  if (digest && (await store.has(digest))) return { bytes: await store.read(digest), digest };
  const fetched = await client.getManifest(repository, selector);
  return { bytes: fetched.bytes, digest: fetched.digest, ...(fetched.contentType ? { contentType: fetched.contentType } : {}) };
}

export async function resolveImage(client: RegistryClient, store: BlobStore, ref: ImageReference, wanted: Platform): Promise<ResolvedImage> {
  const name = formatReference(ref);
  const selector = manifestSelector(ref);
  const known = ref.digest ?? (await client.headManifest(ref.repository, selector));
  const top = await fetchDocument(client, store, ref.repository, selector, known);
  const documents = new Map<Digest, Buffer>([[top.digest, top.bytes]]);
  let doc = parseManifest(top.bytes, `manifest of ${name}`, top.contentType);
  let digest = top.digest;
  let platform: Platform | null = null;
  for (let depth = 0; doc.kind === 'index'; depth++) {
    if (depth > 2) throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `${name}: indexes nested too deeply`);
    const chosen = selectPlatform(doc, wanted, name);
    platform = chosen.platform ?? null;
    const child = await fetchDocument(client, store, ref.repository, chosen.digest, chosen.digest);
    if (child.digest !== chosen.digest || child.bytes.length !== chosen.size) {
      throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${name}: manifest for ${formatPlatform(wanted)} does not match its descriptor ${chosen.digest}`);
    }
    documents.set(child.digest, child.bytes);
    doc = parseManifest(child.bytes, `manifest ${chosen.digest} of ${name}`, chosen.mediaType);
    digest = child.digest;
  }
  return { repoDigest: top.digest, manifestDigest: digest, manifest: doc, documents, platform };
}
