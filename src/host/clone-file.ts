import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { chmod, copyFile, open, rm, statfs, type FileHandle } from 'node:fs/promises';

/**
 * Copy-on-write storage of a file that mostly equals another (a snapshot's RAM and its parent's).
 * Where the file system has reflinks (XFS, btrfs, bcachefs), the new file starts as a clone of
 * `base` that shares all its blocks, and only the 4 KiB pages where `source` differs are written
 * into it: it costs disk in proportion to what changed, and stays an ordinary file that QEMU maps
 * as before (forks read it as fast as a full copy). Nothing refers to `base` afterwards: the file
 * system counts the shared blocks, so removing either file never harms the other.
 *
 * Why not content-addressed chunks: a fork maps its snapshot's RAM file directly, so chunks would
 * have to be reassembled into a whole file before every first fork, the very cost forks avoid.
 */

/** Pages compared and written: the guest's page size, and the block size of XFS and btrfs here. */
export const CLONE_PAGE_BYTES = 4096;
const READ_BYTES = 1024 * 1024;

/** Errors of a file system (or a pair of them) that cannot clone: the caller copies whole instead. */
const CANNOT_CLONE = new Set(['ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EINVAL', 'ENOSYS', 'ENOTTY']);

export interface CloneResult {
  /** Bytes written into the clone (pages that differ from `base`): what the new file adds on disk. */
  changedBytes: number;
  /** The size of `source`, and so of the new file. */
  totalBytes: number;
}

/**
 * Writes `source` into the new file `target` (0600, created exclusively: a symlink planted there is
 * not followed) as a clone of `base` with only the differing pages written, fsynced. Resolves null,
 * leaving no `target`, when the file system cannot clone `base` into `target`'s folder.
 */
export async function cloneWithChanges(base: string, source: string, target: string): Promise<CloneResult | null> {
  try {
    await copyFile(base, target, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE_FORCE);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    // Node creates the target before it asks for the clone: a refusal leaves an empty file.
    if (code !== 'EEXIST') await rm(target, { force: true });
    if (CANNOT_CLONE.has(code)) return null;
    throw err;
  }
  try {
    await chmod(target, 0o600);
    const from = await open(source, 'r');
    try {
      const to = await open(target, 'r+');
      try {
        const totalBytes = (await from.stat()).size;
        const changedBytes = await writeDifferences(from, to, totalBytes);
        if ((await to.stat()).size !== totalBytes) await to.truncate(totalBytes);
        await to.sync();
        return { changedBytes, totalBytes };
      } finally {
        await to.close();
      }
    } finally {
      await from.close();
    }
  } catch (err) {
    await rm(target, { force: true });
    throw err;
  }
}

/** Compares `from` with `to` page by page and writes each run of differing pages into `to`. */
async function writeDifferences(from: FileHandle, to: FileHandle, size: number): Promise<number> {
  const ours = Buffer.alloc(READ_BYTES);
  const theirs = Buffer.alloc(READ_BYTES);
  let changed = 0;
  for (let offset = 0; offset < size; offset += READ_BYTES) {
    const length = Math.min(READ_BYTES, size - offset);
    const [got] = await Promise.all([readFully(from, ours, length, offset), readFully(to, theirs, length, offset)]);
    if (got !== length) throw new Error(`the file being cloned shrank while it was read (${offset + got} of ${size} bytes)`);
    // Most of a RAM file equals its parent's: one comparison of the whole block settles it.
    if (ours.compare(theirs, 0, length, 0, length) === 0) continue;
    let run = -1;
    for (let page = 0; page < length; page += CLONE_PAGE_BYTES) {
      const end = Math.min(page + CLONE_PAGE_BYTES, length);
      if (ours.compare(theirs, page, end, page, end) !== 0) {
        if (run < 0) run = page;
      } else if (run >= 0) {
        changed += await writeFully(to, ours.subarray(run, page), offset + run);
        run = -1;
      }
    }
    if (run >= 0) changed += await writeFully(to, ours.subarray(run, length), offset + run);
  }
  return changed;
}

/** Reads up to `length` bytes at `position`; bytes past the end of the file read as zeros. */
async function readFully(file: FileHandle, buf: Buffer, length: number, position: number): Promise<number> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await file.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  buf.fill(0, got, length);
  return got;
}

async function writeFully(file: FileHandle, data: Buffer, position: number): Promise<number> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await file.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
  return data.length;
}

/** statfs types of file systems with reflinks. */
const XFS_MAGIC = 0x58465342;
const REFLINK_FILE_SYSTEMS = new Set([XFS_MAGIC, 0x9123683e /* btrfs */, 0xca451a4e /* bcachefs */]);

/** Whether `dir` lies on a file system that can clone files (so snapshots there share their parents' pages). */
export async function canClone(dir: string): Promise<boolean> {
  const fs = await statfs(dir).catch(() => null);
  return fs !== null && REFLINK_FILE_SYSTEMS.has(fs.type);
}

/**
 * On XFS, a write into a shared block reserves a 128 KiB copy-on-write extent by default and keeps
 * the unused part for up to 30 minutes (speculative_cow_prealloc_lifetime): a snapshot that changed
 * scattered pages looked ten times its size on `df` meanwhile. A 4 KiB hint on the snapshots folder,
 * inherited by every folder and file made in it, reserves only what is written. Best effort: needs
 * xfs_io (xfsprogs, present where XFS was made); says why when it could not.
 */
export async function preferPageSizedCopies(dir: string): Promise<string | null> {
  const fs = await statfs(dir).catch(() => null);
  if (fs?.type !== XFS_MAGIC) return null;
  return new Promise((resolve) => {
    execFile('xfs_io', ['-c', `cowextsize ${CLONE_PAGE_BYTES}`, dir], { timeout: 10_000 }, (err, _out, stderr) => {
      resolve(err ? `xfs_io -c cowextsize on ${dir} failed (${(stderr || err.message).trim().slice(0, 200)}): snapshots that share pages may look larger on df for up to 30 minutes` : null);
    });
  });
}
