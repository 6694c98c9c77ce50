import { mkdtemp, mkdir, realpath, rm, writeFile, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { explainNoSpace, mib } from '../free-space.js';
import { runTool } from '../run-tool.js';
import { applyLayer, newUnpackState, type UnpackLimits, type UnpackState } from './apply-layer.js';
import { FollowInterrupted } from '../../store/blob-store.js';
import { isOutOfSpace, removeTree, StagingFullError, TMPFS_STAGING_PREFIX, tmpfsStaging } from './staging.js';

/**
 * Unpacks an image's layers, in order, into a fresh staging dir (on tmpfs when it fits, see
 * staging.ts). Layers may still be downloading: each is awaited just before it is applied, so
 * unpacking overlaps the downloads. On any failure the staging dir is removed before the error
 * propagates.
 */
export const DEFAULT_UNPACK_LIMITS: UnpackLimits = {
  maxEntries: 2_000_000,
  maxBytes: 64 * 1024 ** 3,
};

export interface LayerToUnpack {
  /** The blob file, or a promise of it (the download in flight); it resolves once the blob is verified. */
  path: string | Promise<string>;
  /**
   * While the blob downloads: resolves to a function that streams its bytes as they arrive
   * (BlobWriter.follow), or to undefined when there is no download to follow.
   */
  live?: Promise<(() => AsyncIterable<Buffer>) | undefined>;
  what: string;
  /** From the config's rootfs.diff_ids: checked when present. */
  diffId?: string;
}

export interface Unpacked {
  dir: string;
  entries: number;
  bytes: number;
  warnings: string[];
}

export interface UnpackOptions {
  layers: readonly LayerToUnpack[];
  /** Parent of the on-disk staging dir: same filesystem as the store. */
  workDir: string;
  /**
   * A tmpfs dir to stage in first when the tree fits (see staging.ts); none: disk only.
   * `layerBytes`: the layers' compressed size, `maxBytes`: a cap on the RAM budget.
   */
  tmpfs?: { dir: string; layerBytes?: number; maxBytes?: number };
  limits?: Partial<UnpackLimits>;
  onLayer?: (index: number, count: number) => void;
  /** The store's tag (store-layout.ts storeTag) in a tmpfs staging dir's name: whose it is. */
  owner?: string;
}

interface Staging {
  parent: string;
  prefix: string;
  onTmpfs: boolean;
  /** Bytes of RAM the tree may take; Infinity on disk. */
  budget: number;
}

/**
 * At most three attempts: tmpfs and streaming first; a tree too big for tmpfs is redone on disk;
 * a followed download that restarted from byte 0 (its bytes may differ from those already
 * unpacked) is redone from the verified blob files.
 */
export async function unpackLayers(opts: UnpackOptions): Promise<Unpacked> {
  const onDisk: Staging = { parent: opts.workDir, prefix: 'unpack-', onTmpfs: false, budget: Infinity };
  const fast = opts.tmpfs ? await tmpfsStaging(opts.tmpfs.dir, opts.tmpfs.layerBytes, opts.tmpfs.maxBytes) : undefined;
  let staging = fast ? { parent: fast.parent, prefix: `${TMPFS_STAGING_PREFIX}${process.pid}-${opts.owner ? `${opts.owner}-` : ''}`, onTmpfs: true, budget: fast.budgetBytes } : onDisk;
  let follow = true;
  for (;;) {
    try {
      return await unpackInto(staging, follow, opts);
    } catch (err) {
      if (err instanceof StagingFullError && staging !== onDisk) staging = onDisk;
      else if (err instanceof FollowInterrupted && follow) follow = false;
      else throw err;
    }
  }
}

async function unpackInto(staging: Staging, follow: boolean, opts: UnpackOptions): Promise<Unpacked> {
  await mkdir(staging.parent, { recursive: true });
  const dir = await mkdtemp(join(staging.parent, staging.prefix));
  let state: UnpackState | undefined;
  let current = 'the image';
  try {
    const root = join(dir, 'rootfs');
    await mkdir(root, { mode: 0o755 });
    state = newUnpackState(await realpath(root), { ...DEFAULT_UNPACK_LIMITS, ...opts.limits }, staging.budget);
    for (const [i, layer] of opts.layers.entries()) {
      current = layer.what;
      const live = follow ? await layer.live : undefined;
      const input = live ? live() : await layer.path;
      opts.onLayer?.(i, opts.layers.length);
      let diffId: string;
      try {
        diffId = await applyLayer(input, state, layer.what);
      } catch (err) {
        // A failed download (a digest mismatch, say) explains a broken stream better than the tar reader can.
        if (live) await layer.path;
        throw err;
      }
      // Unverified bytes until here: the tree is used only if the download's checks passed.
      if (live) await layer.path;
      if (layer.diffId && layer.diffId !== diffId) {
        throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${layer.what}: uncompressed content ${diffId} does not match the config's diff id ${layer.diffId}`);
      }
    }
    await applyXattrs(state, dir, staging.onTmpfs);
    return { dir, entries: state.entries, bytes: state.bytes, warnings: state.warnings };
  } catch (err) {
    await removeTree(dir);
    if (staging.onTmpfs && isOutOfSpace(err)) throw new StagingFullError((err as Error).message);
    // On disk there is nowhere else to go: say which file system filled, and how far the tree got.
    throw await explainNoSpace(err, staging.parent, `unpacking ${current} stopped after ${mib(state?.bytes ?? 0)} MiB of uncompressed layers`);
  }
}

/** The staged tree inside an unpack dir. */
export function rootfsOf(unpacked: Unpacked): string {
  return join(unpacked.dir, 'rootfs');
}

function escapePath(path: string): string {
  let out = '';
  for (const byte of Buffer.from(path, 'utf8')) {
    out += byte > 0x20 && byte < 0x7f && byte !== 0x5c ? String.fromCharCode(byte) : `\\${byte.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/**
 * One `setfattr --restore` for the whole tree (after every chown, which would clear capabilities).
 * On tmpfs a failure means "redo on disk" (tmpfs before Linux 6.6 refuses user.* xattrs); only
 * a missing setfattr is a warning there, as it would be on disk.
 */
async function applyXattrs(state: UnpackState, workDir: string, onTmpfs: boolean): Promise<void> {
  if (state.xattrs.size === 0) return;
  const lines: string[] = [];
  for (const [path, attrs] of state.xattrs) {
    lines.push(`# file: ${escapePath(path)}`);
    for (const [name, value] of attrs) {
      if (!/^(user|trusted|security)\.[\x21-\x7e]+$/.test(name) || name.includes('=')) {
        state.warnings.push(`skipped xattr ${name} on /${path}`);
        continue;
      }
      lines.push(`${name}=0x${value.toString('hex')}`);
    }
    lines.push('');
  }
  const dump = join(workDir, 'xattrs.dump');
  await writeFile(dump, `${lines.join('\n')}\n`);
  await chmod(dump, 0o600);
  try {
    await runTool('setfattr', [`--restore=${dump}`], { code: ErrorCodes.UNSAFE_ARCHIVE, pkg: 'attr', cwd: state.root });
  } catch (err) {
    const missingTool = err instanceof CellError && err.code === ErrorCodes.HOST_MISSING_DEPENDENCY;
    if (onTmpfs && !missingTool) throw new StagingFullError(`extended attributes not supported: ${(err as Error).message}`);
    state.warnings.push(`extended attributes of ${state.xattrs.size} files not set: ${(err as Error).message}`);
  } finally {
    await rm(dump, { force: true });
  }
}
