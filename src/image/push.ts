import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Db } from '../store/database.js';
import { BlobStore } from '../store/blob-store.js';
import { checkDigest, isDigest, type Digest } from './digest.js';
import { parseManifest, type Descriptor } from './manifest.js';
import { formatReference, manifestSelector, parseReference } from './reference.js';
import { RegistryClient } from './registry/client.js';
import { findCredential } from './registry/credentials.js';
import { backoffMs, sleep, type RetryPolicy } from './registry/retry.js';

/**
 * Pushes a local image (or index) from the blob store to a registry: for each manifest, the
 * layers the registry lacks (HEAD first; cross-mounted from `mountFrom` when given), then the
 * config, then the manifest itself; an index after all its manifests.
 */
export interface PushOptions {
  /** A manifest or index digest in the blob store, or a reference recorded in `db`. */
  image: string;
  /** Where to push: `host:5000/ns/name:tag`. */
  reference: string;
  storeRoot: string;
  db?: Db;
  insecureRegistries?: readonly string[];
  credentialsPath?: string;
  dockerConfigPath?: string | null;
  /** Another repository on the same registry that may hold the blobs already. */
  mountFrom?: string;
  retry?: RetryPolicy;
  onProgress?: (e: { digest: string; status: 'exists' | 'mounted' | 'uploaded'; size: number }) => void;
}

export async function pushImage(opts: PushOptions): Promise<{ digest: Digest; reference: string }> {
  const target = parseReference(opts.reference);
  const store = new BlobStore(opts.storeRoot);
  const digest = localDigest(opts);
  const credential = await findCredential(target.registry, {
    ...(opts.credentialsPath ? { credentialsPath: opts.credentialsPath } : {}),
    ...(opts.dockerConfigPath !== undefined ? { dockerConfigPath: opts.dockerConfigPath } : {}),
  });
  const client = new RegistryClient({
    registry: target.registry,
    ...(credential ? { credential } : {}),
    ...(opts.insecureRegistries ? { insecureRegistries: opts.insecureRegistries } : {}),
    ...(opts.retry ? { retry: opts.retry } : {}),
  });
  const ctx = { client, store, repository: target.repository, opts };
  await pushDocument(ctx, digest, target.digest ? target.digest : manifestSelector(target));
  return { digest, reference: formatReference(target) };
}

function localDigest(opts: PushOptions): Digest {
  if (isDigest(opts.image)) return opts.image;
  if (!opts.db) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `push: "${opts.image}" is not a digest and no database was given to look it up`);
  const ref = formatReference(parseReference(opts.image));
  const row = opts.db.prepare('SELECT digest FROM images WHERE reference = ? OR reference = ?').get(ref, opts.image) as { digest: string } | undefined;
  if (!row) throw new CellError(ErrorCodes.IMAGE_NOT_FOUND, `no local image ${opts.image}`);
  return checkDigest(row.digest, `image ${opts.image}`);
}

interface PushContext {
  client: RegistryClient;
  store: BlobStore;
  repository: string;
  opts: PushOptions;
}

async function pushDocument(ctx: PushContext, digest: Digest, selector: string): Promise<void> {
  if (!(await ctx.store.has(digest))) throw new CellError(ErrorCodes.NOT_FOUND, `manifest ${digest} is not in the local blob store`);
  const bytes = await ctx.store.read(digest);
  const doc = parseManifest(bytes, `manifest ${digest}`);
  if (doc.kind === 'index') {
    for (const child of doc.manifests) await pushDocument(ctx, child.digest, child.digest);
  } else {
    for (const layer of doc.layers) await pushBlob(ctx, layer);
    await pushBlob(ctx, doc.config);
  }
  await ctx.client.putManifest(ctx.repository, selector, bytes, doc.mediaType);
}

async function pushBlob(ctx: PushContext, desc: Descriptor): Promise<void> {
  const { client, store, repository, opts } = ctx;
  if ((await client.headBlob(repository, desc.digest, [`repository:${repository}:pull,push`])) !== undefined) {
    opts.onProgress?.({ digest: desc.digest, status: 'exists', size: desc.size });
    return;
  }
  const size = await store.size(desc.digest);
  if (size === undefined) throw new CellError(ErrorCodes.NOT_FOUND, `blob ${desc.digest} is not in the local blob store`);
  if (size !== desc.size) throw new CellError(ErrorCodes.DIGEST_MISMATCH, `local blob ${desc.digest} has ${size} bytes, its descriptor says ${desc.size}`);
  const path = store.path(desc.digest);
  const status = await uploadBlob(client, repository, desc.digest, size, () => createReadStream(path), opts.mountFrom);
  opts.onProgress?.({ digest: desc.digest, status, size });
}

/**
 * Sends one blob the registry lacks (cross-mounted from `mountFrom` when it has it there), retried
 * with backoff; `open` gives its bytes afresh for each attempt.
 */
export async function uploadBlob(
  client: RegistryClient,
  repository: string,
  digest: Digest,
  size: number,
  open: () => NodeJS.ReadableStream,
  mountFrom?: string,
): Promise<'mounted' | 'uploaded'> {
  const policy = client.transport.retry;
  for (let attempt = 0; ; attempt++) {
    try {
      const started = await client.startUpload(repository, mountFrom ? { mount: { digest, from: mountFrom } } : {});
      if (started.mounted) return 'mounted';
      await client.finishUpload(repository, started.location, digest, size, () =>
        size === 0 ? Buffer.alloc(0) : (Readable.toWeb(open() as Readable) as unknown as ReadableStream),
      );
      return 'uploaded';
    } catch (err) {
      const fatal = err instanceof CellError && (err.code === ErrorCodes.UNAUTHORIZED || err.code === ErrorCodes.DIGEST_MISMATCH);
      if (fatal || attempt + 1 >= policy.attempts) throw err;
      await sleep(backoffMs(policy, attempt));
    }
  }
}
