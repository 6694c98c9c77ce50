import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Db } from '../store/database.js';
import { BlobStore, type BlobWriter } from '../store/blob-store.js';
import { ImagePins } from '../store/image-pins.js';
import type { Digest } from './digest.js';
import { assertRoom, explainNoSpace } from './free-space.js';
import { parseImageConfig } from './image-config.js';
import { installImage, type InstalledImage } from './install.js';
import { limitConcurrency } from './limit.js';
import { DEFAULT_PLATFORM, formatPlatform, parsePlatform, platformMatches, type Platform } from './platform.js';
import { noCheckpoint, type Checkpoint, type PullProgressFn } from './progress.js';
import { formatReference, parseReference } from './reference.js';
import { downloadBlob } from './registry/blob-download.js';
import { RegistryClient } from './registry/client.js';
import { findCredential, type CredentialSources } from './registry/credentials.js';
import type { RetryPolicy } from './registry/retry.js';
import { resolveImage } from './resolve.js';
import type { UnpackLimits } from './unpack/apply-layer.js';

/**
 * `pullImage`: reference -> manifest -> blobs (checked, in parallel, at most `concurrency` at a
 * time) -> unpacked tree -> ext4 base disk -> one SQLite transaction recording the image and its
 * pins. Unpacking reads each layer while it downloads; the tree is used only once every blob
 * passed its size and digest checks. On any failure nothing is recorded, and blobs this pull
 * added that nothing else uses are removed again.
 */
export interface PullOptions {
  reference: string;
  /** `os/arch[/variant]`; default linux/amd64. */
  platform?: string | Platform;
  /** CELL_HOME: blobs, base disks and work dirs go under it. */
  storeRoot: string;
  db: Db;
  onProgress?: PullProgressFn;
  insecureRegistries?: readonly string[];
  /** cellvm's credential file (see login); ~/.docker/config.json is read too unless dockerConfigPath is null. */
  credentialsPath?: string;
  dockerConfigPath?: string | null;
  /** Largest declared blob size accepted, checked before downloading. */
  maxBlobBytes?: number;
  limits?: Partial<UnpackLimits>;
  /** tmpfs dir for the unpack staging tree when it fits (default /dev/shm); null: on disk only. */
  stagingTmpfs?: string | null;
  concurrency?: number;
  retry?: RetryPolicy;
  signal?: AbortSignal;
  /** Crash-drill steps: pull:resolved, pull:config-stored, pull:layer-stored, then installImage's. */
  checkpoint?: Checkpoint;
}

export const DEFAULT_MAX_BLOB_BYTES = 16 * 1024 ** 3;
/** Configs are JSON; anything bigger is not an image config. */
const MAX_CONFIG_BYTES = 64 * 1024 * 1024;
export const DEFAULT_CONCURRENCY = 3;

export type PulledImage = InstalledImage;

export async function pullImage(opts: PullOptions): Promise<PulledImage> {
  const ref = parseReference(opts.reference);
  const reference = formatReference(ref);
  const wanted = typeof opts.platform === 'string' ? parsePlatform(opts.platform) : (opts.platform ?? DEFAULT_PLATFORM);
  const store = new BlobStore(opts.storeRoot);
  const sources: CredentialSources = {
    ...(opts.credentialsPath ? { credentialsPath: opts.credentialsPath } : {}),
    ...(opts.dockerConfigPath !== undefined ? { dockerConfigPath: opts.dockerConfigPath } : {}),
  };
  const credential = await findCredential(ref.registry, sources);
  const abort = new AbortController();
  const onOuterAbort = (): void => abort.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const client = new RegistryClient({
    registry: ref.registry,
    ...(credential ? { credential } : {}),
    ...(opts.insecureRegistries ? { insecureRegistries: opts.insecureRegistries } : {}),
    ...(opts.retry ? { retry: opts.retry } : {}),
    signal: abort.signal,
  });

  const added = new Set<string>();
  const pending: Promise<unknown>[] = [];
  const checkpoint = opts.checkpoint ?? noCheckpoint;
  try {
    const resolved = await resolveImage(client, store, ref, wanted);
    const { manifest } = resolved;
    for (const [digest, bytes] of resolved.documents) {
      if (!(await store.has(digest))) added.add(await store.put(bytes, { digest, what: `manifest ${digest}` }));
    }
    await checkpoint('pull:resolved');
    opts.onProgress?.({
      phase: 'resolved',
      reference,
      digest: resolved.manifestDigest,
      platform: resolved.platform ? formatPlatform(resolved.platform) : null,
      blobs: [
        { digest: manifest.config.digest, size: manifest.config.size, kind: 'config' },
        ...manifest.layers.map((l) => ({ digest: l.digest, size: l.size, kind: 'layer' as const })),
      ],
    });

    const maxBlob = opts.maxBlobBytes ?? DEFAULT_MAX_BLOB_BYTES;
    // Refuse an oversized image before the first byte of any layer.
    for (const l of [manifest.config, ...manifest.layers]) {
      if (l.size > (l === manifest.config ? MAX_CONFIG_BYTES : maxBlob)) {
        throw new CellError(ErrorCodes.SIZE_LIMIT, `${reference}: blob ${l.digest} declares ${l.size} bytes, more than the ${l === manifest.config ? MAX_CONFIG_BYTES : maxBlob} allowed`, {
          digest: l.digest,
          size: l.size,
        });
      }
    }
    // Refuse an image whose blobs cannot fit before the first byte of them (its tree needs more
    // still, and runs out of room with its own error: unpack-layers.ts).
    const missing = new Map<string, number>();
    for (const l of [manifest.config, ...manifest.layers]) if (!(await store.has(l.digest, l.size))) missing.set(l.digest, l.size);
    await assertRoom(opts.storeRoot, [...missing.values()].reduce((a, b) => a + b, 0), `pulling ${reference} (the layers and config not stored yet)`);
    const fetchBlob = async (desc: (typeof manifest.layers)[number], what: string, max: number, onWriter?: (w: BlobWriter) => void): Promise<string> => {
      const had = await store.has(desc.digest, desc.size);
      const path = await downloadBlob(client, ref.repository, desc, store, {
        what,
        maxBytes: max,
        onProgress: (p) => opts.onProgress?.({ phase: 'blob', ...p }),
        ...(onWriter ? { onWriter } : {}),
      });
      if (!had) added.add(desc.digest);
      await checkpoint(desc === manifest.config ? 'pull:config-stored' : 'pull:layer-stored');
      return path;
    };

    await fetchBlob(manifest.config, `config of ${reference}`, MAX_CONFIG_BYTES);
    const configBytes = await store.read(manifest.config.digest);
    checkPlatform(parseImageConfig(configBytes, `config of ${reference}`).platform, wanted, reference, resolved.platform !== null);

    // Each layer's download can be followed while it runs, so unpacking need not wait for it.
    const limit = limitConcurrency(opts.concurrency ?? DEFAULT_CONCURRENCY);
    const layers = manifest.layers.map((l, i) => {
      let started!: (follow: (() => AsyncIterable<Buffer>) | undefined) => void;
      const live = new Promise<(() => AsyncIterable<Buffer>) | undefined>((resolve) => (started = resolve));
      const path = limit(() => fetchBlob(l, `layer ${i + 1}/${manifest.layers.length} of ${reference}`, maxBlob, (w) => started(() => w.follow())));
      // Already stored, or failed before it started: nothing to follow (a no-op once started).
      void path.then(() => started(undefined), () => started(undefined));
      return { path, live };
    });
    const layerPaths = layers.map((l) => l.path);
    for (const p of layerPaths) pending.push(p.catch(() => undefined));

    return await installImage({
      storeRoot: opts.storeRoot,
      db: opts.db,
      reference,
      repoDigest: resolved.repoDigest,
      manifestDigest: resolved.manifestDigest,
      manifest,
      configBytes,
      platform: formatPlatform(resolved.platform ?? wanted),
      layerPaths,
      liveLayers: layers.map((l) => l.live),
      blobs: [...resolved.documents.keys(), manifest.config.digest, ...manifest.layers.map((l) => l.digest)],
      ...(opts.limits ? { limits: opts.limits } : {}),
      ...(opts.stagingTmpfs !== undefined ? { stagingTmpfs: opts.stagingTmpfs } : {}),
      ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
      checkpoint: (step) => checkpoint(`pull:${step}`),
    });
  } catch (err) {
    abort.abort(err);
    await Promise.allSettled(pending);
    await removeUnused(store, new ImagePins(opts.db), added);
    throw await explainNoSpace(err, opts.storeRoot, `pulling ${reference} stopped`);
  } finally {
    opts.signal?.removeEventListener('abort', onOuterAbort);
  }
}

/** A config naming another platform is an error when asked for one, since a VM could not run it. */
function checkPlatform(actual: Partial<Platform>, wanted: Platform, reference: string, fromIndex: boolean): void {
  if (fromIndex || !actual.os || !actual.architecture) return;
  if (!platformMatches(wanted, actual as Platform)) {
    throw new CellError(
      ErrorCodes.IMAGE_NOT_FOUND,
      `${reference} is an image for ${formatPlatform(actual as Platform)}, not ${formatPlatform(wanted)}`,
      { platform: formatPlatform(actual as Platform) },
    );
  }
}

/** Removes blobs this operation added, unless a recorded image or a pin needs them. */
export async function removeUnused(store: BlobStore, pins: ImagePins, added: Iterable<string>): Promise<void> {
  const live = pins.liveBlobDigests();
  for (const digest of added) if (!live.has(digest)) await store.delete(digest as Digest).catch(() => undefined);
}
