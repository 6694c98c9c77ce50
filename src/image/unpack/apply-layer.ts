import { createHash } from 'node:crypto';
import { chmod, lchown, link, lstat, readdir, rm, utimes } from 'node:fs/promises';
import { chmodSync, closeSync, fchmodSync, fchownSync, futimesSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { runTool } from '../run-tool.js';
import { openTarStream } from './decompress.js';
import { MAX_PATH_BYTES, entryComponents, resolveDir, unsafe } from './safe-path.js';
import { stagedCost, StagingFullError } from './staging.js';
import { eachTarEntry } from './each-tar-entry.js';
import type { TarEntry, TarHeader } from './tar-reader.js';

/**
 * Applies one layer (a possibly compressed tar) on top of the tree in `state.root`, with OCI
 * whiteout semantics: `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties its
 * directory of lower-layer content. State carried across layers: counters for the caps, xattrs to
 * set at the end, warnings for what could not be reproduced.
 */
export interface UnpackLimits {
  /** Entries over all layers. */
  maxEntries: number;
  /** Uncompressed tar bytes over all layers (guards against decompression bombs). */
  maxBytes: number;
}

export interface UnpackState {
  root: string;
  limits: UnpackLimits;
  entries: number;
  bytes: number;
  warnings: string[];
  /** xattrs by image path, applied once all layers are in (a later layer may replace the file). */
  xattrs: Map<string, Map<string, Buffer>>;
  /** Image paths known to be real directories; cleared whenever something is removed. */
  knownDirs: Set<string>;
  isRoot: boolean;
  /** Estimated RAM the tree takes when staged on tmpfs, and the most it may take there. */
  staged: number;
  stageBudget: number;
}

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

export function newUnpackState(root: string, limits: UnpackLimits, stageBudget = Infinity): UnpackState {
  return { root, limits, entries: 0, bytes: 0, warnings: [], xattrs: new Map(), knownDirs: new Set(), isRoot: process.getuid?.() === 0, staged: 0, stageBudget };
}

/**
 * Returns the layer's diff id: the sha256 of its uncompressed tar. `blob` is the blob file, or its
 * bytes while they download (the caller checks the download's digest before using the tree).
 */
export async function applyLayer(blob: string | AsyncIterable<Buffer>, state: UnpackState, what: string): Promise<string> {
  const stream = await openTarStream(blob, what);
  const hash = createHash('sha256');
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const chunk of stream.bytes) {
      state.bytes += chunk.length;
      if (state.bytes > state.limits.maxBytes) {
        throw new CellError(ErrorCodes.SIZE_LIMIT, `${what}: the image unpacks to more than ${state.limits.maxBytes} bytes`);
      }
      hash.update(chunk);
      yield chunk;
    }
  }
  const layerPaths = new Set<string>();
  const dirTimes: { path: string; mtime: number }[] = [];
  await eachTarEntry(stream, counted(), what, {}, async (entry) => {
    if (++state.entries > state.limits.maxEntries) {
      throw new CellError(ErrorCodes.SIZE_LIMIT, `${what}: the image has more than ${state.limits.maxEntries} files`);
    }
    state.staged += stagedCost(entry.header.type === 'file' ? entry.header.size : 0);
    if (state.staged > state.stageBudget) throw new StagingFullError(`the tree needs more than ${state.stageBudget} bytes`);
    try {
      await applyEntry(entry, state, what, layerPaths, dirTimes);
    } catch (err) {
      throw entryFailure(err, entry.header.path, what);
    }
  });
  // Directory times last: creating their children changed them.
  for (const d of dirTimes.reverse()) await utimes(d.path, d.mtime, d.mtime).catch(() => undefined);
  return `sha256:${hash.digest('hex')}`;
}

async function applyEntry(
  entry: TarEntry,
  state: UnpackState,
  what: string,
  layerPaths: Set<string>,
  dirTimes: { path: string; mtime: number }[],
): Promise<void> {
  const h = entry.header;
  const parts = entryComponents(h.path, what);
  if (parts.length === 0) {
    // The root itself: only its metadata matters.
    if (h.type === 'dir') await setMetadata(state.root, h, state, false);
    return;
  }
  const base = parts[parts.length - 1]!;
  const dirOpts = { entry: h.path, what, knownDirs: state.knownDirs };

  if (base.startsWith(WHITEOUT)) {
    if (base === OPAQUE) {
      const dir = await resolveDir(state.root, parts.slice(0, -1), { ...dirOpts, create: true });
      await makeOpaque(dir!.hostPath, dir!.imagePath, state, layerPaths);
    } else if (base.startsWith(`${WHITEOUT}${WHITEOUT}`)) {
      state.warnings.push(`${what}: ignored special whiteout ${h.path}`);
    } else {
      const parent = await resolveDir(state.root, parts.slice(0, -1), { ...dirOpts, create: false });
      const name = base.slice(WHITEOUT.length);
      if (parent && name && name !== '.' && name !== '..') await removePath(join(parent.hostPath, name), joinImage(parent.imagePath, name), state);
    }
    return;
  }

  const parent = await resolveDir(state.root, parts.slice(0, -1), { ...dirOpts, create: true });
  const target = join(parent!.hostPath, base);
  const imagePath = joinImage(parent!.imagePath, base);
  // The path and its ancestors belong to this layer: an opaque marker must not remove them.
  for (let i = imagePath.indexOf('/'); i !== -1; i = imagePath.indexOf('/', i + 1)) layerPaths.add(imagePath.slice(0, i));
  layerPaths.add(imagePath);

  state.xattrs.delete(imagePath);
  // Create first and look only when the name is taken: one syscall fewer per entry. O_EXCL,
  // mkdir and symlink never follow a symlink already sitting at the name.
  const fresh = async <T>(create: () => Promise<T>): Promise<T> => {
    try {
      return await create();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      await removePath(target, imagePath, state);
      return create();
    }
  };

  switch (h.type) {
    case 'dir':
      try {
        mkdirSync(target, { mode: 0o700 });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        if (!lstatSync(target).isDirectory()) await fresh(async () => mkdirSync(target, { mode: 0o700 }));
      }
      state.knownDirs.add(imagePath);
      setMetadataSync(target, h, state);
      dirTimes.push({ path: target, mtime: h.mtime });
      break;
    case 'file':
      await writeFile(await fresh(async () => openSync(target, 'wx', 0o600)), entry, h, state);
      break;
    case 'symlink':
      if (h.linkpath === '' || h.linkpath.includes('\0') || Buffer.byteLength(h.linkpath) > MAX_PATH_BYTES) throw unsafe(h.path, `the symlink's target is not a path Linux can hold`, what);
      await fresh(async () => symlinkSync(h.linkpath, target));
      if (state.isRoot) lchownSync(target, h.uid, h.gid);
      lutimesSync(target, h.mtime, h.mtime);
      break;
    case 'hardlink':
      await hardLink(target, h, state, what, fresh);
      break;
    case 'char':
    case 'block':
    case 'fifo':
      if (await fresh(() => makeNode(target, h, state, what))) await setMetadata(target, h, state, true);
      break;
    default:
      state.warnings.push(`${what}: skipped ${h.path} (unsupported tar entry type '${h.typeflag}')`);
      return;
  }
  if (h.xattrs.size > 0 && (h.type === 'file' || h.type === 'dir')) state.xattrs.set(imagePath, h.xattrs);
}

/**
 * What an entry's failure becomes. CellErrors stay as they are; a full tmpfs or disk (ENOSPC,
 * EDQUOT) too, so that unpackLayers can redo a tmpfs unpack on disk. Any other error is a
 * CellError naming the entry: unsafe_archive when the entry itself cannot exist on Linux (a
 * name too long, a value out of range), internal for what the host failed at.
 */
function entryFailure(err: unknown, path: string, what: string): unknown {
  if (err instanceof CellError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return err;
  const message = err instanceof Error ? err.message : String(err);
  const archive = code !== undefined && ENTRY_ERRORS.has(code);
  return new CellError(archive ? ErrorCodes.UNSAFE_ARCHIVE : ErrorCodes.INTERNAL, `${what}: entry "${path.slice(0, 200)}" could not be unpacked: ${message}`, { entry: path }, { cause: err });
}

/** Errors that an entry's own name, link or numbers cause. */
const ENTRY_ERRORS: ReadonlySet<string> = new Set(['ENAMETOOLONG', 'ELOOP', 'ENOTDIR', 'EISDIR', 'EEXIST', 'EINVAL', 'EMLINK', 'ENOTEMPTY', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_VALUE', 'ERR_INVALID_ARG_TYPE']);

function joinImage(dir: string, name: string): string {
  return dir ? `${dir}/${name}` : name;
}

/**
 * Streams the body into the new file, then owner, mode and times through the same descriptor.
 * Synchronous calls on purpose: an image has thousands of small files, and a thread-pool round
 * trip per syscall (six per file) made unpacking several times slower than umoci. Each call is
 * microseconds, and the loop still yields between body chunks.
 */
async function writeFile(fd: number, entry: TarEntry, h: TarHeader, state: UnpackState): Promise<void> {
  try {
    let pos = 0;
    for await (const chunk of entry.body()) {
      let off = 0;
      while (off < chunk.length) {
        const written = writeSync(fd, chunk, off, chunk.length - off, pos);
        off += written;
        pos += written;
      }
    }
    if (state.isRoot) fchownSync(fd, h.uid, h.gid);
    fchmodSync(fd, h.mode);
    futimesSync(fd, h.mtime, h.mtime);
  } finally {
    closeSync(fd);
  }
}

function setMetadataSync(path: string, h: TarHeader, state: UnpackState): void {
  if (state.isRoot) lchownSync(path, h.uid, h.gid);
  chmodSync(path, h.mode);
}

/** Owner first (chown clears set-id bits), then mode, then times. */
async function setMetadata(path: string, h: TarHeader, state: UnpackState, withTimes: boolean): Promise<void> {
  if (state.isRoot) await lchown(path, h.uid, h.gid);
  await chmod(path, h.mode);
  if (withTimes) await utimes(path, h.mtime, h.mtime);
}

async function hardLink(
  target: string,
  h: TarHeader,
  state: UnpackState,
  what: string,
  fresh: (create: () => Promise<void>) => Promise<void>,
): Promise<void> {
  const parts = entryComponents(h.linkpath, what, h.path);
  if (parts.length === 0) throw unsafe(h.path, `hard link to the root directory`, what);
  const dir = await resolveDir(state.root, parts.slice(0, -1), { entry: h.path, what, knownDirs: state.knownDirs, create: false });
  const source = dir ? join(dir.hostPath, parts[parts.length - 1]!) : undefined;
  const st = source ? await lstat(source).catch(() => undefined) : undefined;
  if (!source || !st) throw unsafe(h.path, `hard link target "${h.linkpath}" does not exist in the image`, what);
  if (st.isDirectory()) throw unsafe(h.path, `hard link target "${h.linkpath}" is a directory`, what);
  await fresh(() => link(source, target));
}

/** Device nodes and FIFOs via mknod(1) (Node has no mknod); without the privilege, a warning. */
async function makeNode(target: string, h: TarHeader, state: UnpackState, what: string): Promise<boolean> {
  if (await lstat(target).catch(() => undefined)) throw Object.assign(new Error('exists'), { code: 'EEXIST' });
  const kind = h.type === 'char' ? ['c', String(h.devmajor), String(h.devminor)] : h.type === 'block' ? ['b', String(h.devmajor), String(h.devminor)] : ['p'];
  try {
    await runTool('mknod', ['-m', (h.mode & 0o777).toString(8), '--', target, ...kind], { code: ErrorCodes.UNSAFE_ARCHIVE, pkg: 'coreutils' });
    return true;
  } catch (err) {
    state.warnings.push(`${what}: could not create device ${h.path}: ${(err as Error).message}`);
    return false;
  }
}

async function removePath(hostPath: string, imagePath: string, state: UnpackState): Promise<void> {
  await rm(hostPath, { recursive: true, force: true });
  state.knownDirs.clear();
  const prefix = `${imagePath}/`;
  for (const key of state.xattrs.keys()) if (key === imagePath || key.startsWith(prefix)) state.xattrs.delete(key);
}

/**
 * Removes what lower layers put in the directory, at any depth; what this layer wrote stays
 * (the marker may come after its siblings in the tar).
 */
async function makeOpaque(hostDir: string, imageDir: string, state: UnpackState, layerPaths: Set<string>): Promise<void> {
  for (const entry of await readdir(hostDir, { withFileTypes: true })) {
    const imagePath = joinImage(imageDir, entry.name);
    if (!layerPaths.has(imagePath)) await removePath(join(hostDir, entry.name), imagePath, state);
    else if (entry.isDirectory()) await makeOpaque(join(hostDir, entry.name), imagePath, state, layerPaths);
  }
}
