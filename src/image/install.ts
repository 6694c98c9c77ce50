import { rm, stat } from 'node:fs/promises';
import type { ImageRecord } from '../domain/image.js';
import type { Db } from '../store/database.js';
import { ImagePins } from '../store/image-pins.js';
import type { Digest } from './digest.js';
import { parseImageConfig } from './image-config.js';
import type { ImageManifest } from './manifest.js';
import { noCheckpoint, type Checkpoint, type PullProgressFn } from './progress.js';
import { buildRootfsDisk } from './rootfs-disk.js';
import { explainNoSpace } from './free-space.js';
import { diskPathFor, imagesDir, storeTag, workDir } from './store-layout.js';
import type { UnpackLimits } from './unpack/apply-layer.js';
import { DEFAULT_TMPFS_STAGING, removeTree } from './unpack/staging.js';
import { rootfsOf, unpackLayers } from './unpack/unpack-layers.js';

/**
 * The common end of pull and import: the image's blobs are (or are about to be) in the blob store;
 * unpack them into a base disk unless one exists for this digest, then record the image and the
 * blobs it pins in one transaction. Nothing is recorded unless everything before succeeded.
 */
export interface InstallInput {
  storeRoot: string;
  db: Db;
  reference: string;
  repoDigest: Digest | null;
  manifestDigest: Digest;
  manifest: ImageManifest;
  configBytes: Buffer;
  platform: string | null;
  /** Blob file of each layer, in order; promises while downloads are still running. */
  layerPaths: readonly (string | Promise<string>)[];
  /** Per layer, its download's bytes as they arrive (see LayerToUnpack.live). */
  liveLayers?: readonly Promise<(() => AsyncIterable<Buffer>) | undefined>[];
  /** Every blob the record pins (manifests, config, layers). */
  blobs: readonly string[];
  limits?: Partial<UnpackLimits>;
  /** tmpfs dir to stage the unpacked tree in when it fits (default /dev/shm); null: on disk only. */
  stagingTmpfs?: string | null;
  onProgress?: PullProgressFn;
  /** Crash-drill steps, named without the operation: unpacked, disk-built, recorded. */
  checkpoint?: Checkpoint;
}

export interface InstalledImage extends ImageRecord {
  repoDigest: string | null;
  configDigest: string;
  platform: string | null;
  /** What the unpack could not reproduce (device nodes without privilege, xattrs, odd entries). */
  warnings: string[];
}

export async function installImage(input: InstallInput): Promise<InstalledImage> {
  const parsed = parseImageConfig(input.configBytes, `config of ${input.reference}`);
  const checkpoint = input.checkpoint ?? noCheckpoint;
  const diskPath = diskPathFor(input.storeRoot, input.manifestDigest);
  let warnings: string[] = [];
  let built = false;
  let sizeBytes: number;
  const existing = await stat(diskPath).catch(() => undefined);
  if (existing) {
    // The disk is there, but the blobs must be too before the record pins them.
    await Promise.all(input.layerPaths);
    input.onProgress?.({ phase: 'disk', status: 'cached' });
    sizeBytes = existing.size;
  } else {
    const unpacked = await unpackLayers({
      layers: input.manifest.layers.map((l, i) => ({
        path: input.layerPaths[i]!,
        ...(input.liveLayers?.[i] ? { live: input.liveLayers[i] } : {}),
        what: `layer ${i + 1}/${input.manifest.layers.length} (${l.digest.slice(0, 19)}) of ${input.reference}`,
        ...(parsed.diffIds[i] ? { diffId: parsed.diffIds[i] } : {}),
      })),
      workDir: workDir(input.storeRoot),
      owner: storeTag(input.storeRoot),
      ...(input.stagingTmpfs !== null
        ? { tmpfs: { dir: input.stagingTmpfs ?? DEFAULT_TMPFS_STAGING, layerBytes: input.manifest.layers.reduce((n, l) => n + l.size, 0) } }
        : {}),
      ...(input.limits ? { limits: input.limits } : {}),
      onLayer: (i, n) => input.onProgress?.({ phase: 'unpack', layer: i + 1, layers: n, digest: input.manifest.layers[i]!.digest }),
    });
    warnings = unpacked.warnings;
    try {
      await checkpoint('unpacked');
      input.onProgress?.({ phase: 'disk', status: 'building' });
      const disk = await buildRootfsDisk(rootfsOf(unpacked), diskPath).catch(async (err: unknown) => {
        throw await explainNoSpace(err, imagesDir(input.storeRoot), `building the base disk of ${input.reference} stopped`);
      });
      built = disk.built;
      sizeBytes = disk.sizeBytes;
    } finally {
      await removeTree(unpacked.dir);
    }
    // Built, not recorded: a crash here leaves a disk nothing names, collected at the next start.
    await checkpoint('disk-built');
  }

  const at = new Date().toISOString();
  const record: InstalledImage = {
    reference: input.reference,
    digest: input.manifestDigest,
    diskPath,
    sizeBytes,
    config: parsed.config,
    builtin: false,
    createdAt: at,
    lastUsed: at,
    repoDigest: input.repoDigest,
    configDigest: input.manifest.config.digest,
    platform: input.platform,
    warnings,
  };
  try {
    new ImagePins(input.db).register({ ...record, blobs: input.blobs, at });
  } catch (err) {
    if (built) await rm(diskPath, { force: true });
    throw err;
  }
  await checkpoint('recorded');
  input.onProgress?.({ phase: 'done', reference: input.reference, digest: input.manifestDigest, diskPath });
  return record;
}
