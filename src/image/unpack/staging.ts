import { constants } from 'node:fs';
import { access, readFile, rm, statfs } from 'node:fs/promises';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { runTool } from '../run-tool.js';

/**
 * Where an image's tree is staged before mke2fs turns it into the base disk. The tree is scratch:
 * it is read once by mke2fs and removed, and nothing points at it. Creating an inode on the
 * store's ext4 cost 0.1-0.8 ms on the benchmark machine (the journal is shared with whatever else
 * the host writes), against ~10 us on tmpfs, and a 13k-file image spent most of its pull there.
 * So the tree goes to tmpfs when it fits in a share of free RAM, else to the store's tmp/ dir.
 * A tmpfs unpack that outgrows its budget (or hits ENOSPC, or cannot hold the image's xattrs)
 * is thrown away and redone on disk: the layers are already in the blob store.
 */
export const DEFAULT_TMPFS_STAGING = '/dev/shm';
/**
 * Name of tmpfs staging dirs: `cellvm-unpack-<pid>-<store tag>-<random>`; the pid lets GC spot
 * orphans, the store's tag lets a starting celld sweep its own (its predecessor's pid may be reused).
 */
export const TMPFS_STAGING_PREFIX = 'cellvm-unpack-';

const TMPFS_MAGIC = 0x01021994;
const PAGE = 4096;
/** tmpfs inode + dentry, roughly. */
const ENTRY_OVERHEAD = 1024;
/**
 * The share of free tmpfs space and of MemAvailable one unpack may take. Modest on purpose: VMs'
 * RAM files live on tmpfs too (often the same /dev/shm), and a guest touching a page of a full
 * tmpfs gets QEMU killed by SIGBUS. The tree is there only for the seconds mke2fs needs.
 */
const RAM_SHARE = 0.25;
const MIN_BUDGET = 64 * 1024 * 1024;

/** Raised inside an unpack on tmpfs to make the caller redo it on disk; never leaves unpackLayers. */
export class StagingFullError extends CellError {
  constructor(why: string) {
    super(ErrorCodes.SIZE_LIMIT, `tmpfs staging abandoned: ${why}`);
    this.name = 'StagingFullError';
  }
}

export interface TmpfsStaging {
  /** Parent dir of the staging dir (a tmpfs mount). */
  parent: string;
  /** Bytes of RAM the staged tree may take (see `stagedCost`). */
  budgetBytes: number;
}

/**
 * `dir` as a staging parent if it is on tmpfs with a useful budget, else undefined (stage on
 * disk). `needAtLeast` (the compressed size of the layers: a tree is rarely smaller) skips tmpfs
 * up front for an image that would surely outgrow it; `maxBudget` caps the budget (tests).
 */
export async function tmpfsStaging(dir: string, needAtLeast = 0, maxBudget = Infinity): Promise<TmpfsStaging | undefined> {
  const fs = await statfs(dir).catch(() => undefined);
  if (!fs || fs.type !== TMPFS_MAGIC) return undefined;
  if (!(await access(dir, constants.W_OK).then(() => true, () => false))) return undefined;
  const free = fs.bavail * fs.bsize;
  const budgetBytes = Math.min(maxBudget, Math.floor(Math.min(free, await memAvailable()) * RAM_SHARE));
  if (budgetBytes < Math.max(Math.min(MIN_BUDGET, maxBudget), needAtLeast)) return undefined;
  return { parent: dir, budgetBytes };
}

async function memAvailable(): Promise<number> {
  const info = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const kib = /^MemAvailable:\s+(\d+) kB/m.exec(info)?.[1];
  return kib ? Number(kib) * 1024 : 0;
}

/** What one entry costs a tmpfs tree: whole pages of data plus its inode. */
export function stagedCost(dataBytes: number): number {
  return Math.ceil(dataBytes / PAGE) * PAGE + ENTRY_OVERHEAD;
}

/** Whether an error means "tmpfs is too small", which a disk unpack may not hit. */
export function isOutOfSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Removes a staging tree: `rm -rf` takes half the time of Node's recursive rm on 13k entries. */
export async function removeTree(path: string): Promise<void> {
  try {
    await runTool('rm', ['-rf', '--one-file-system', '--', path], { code: ErrorCodes.INTERNAL, pkg: 'coreutils' });
  } catch {
    await rm(path, { recursive: true, force: true });
  }
}
