import { statfs } from 'node:fs/promises';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * Room on the store's file system, checked before a pull or import writes anything, and the words
 * for running out of it part-way (another writer may fill the disk meanwhile, and an image's tree
 * is larger than its compressed layers): which file system, how much was needed, how much is free.
 */
const MIB = 1024 * 1024;

export const mib = (bytes: number): string => (bytes / MIB).toFixed(1);

/** Bytes an unprivileged writer may still use on the file system holding `dir`; NaN if unknown. */
export async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir).catch(() => null);
  return fs ? fs.bavail * fs.bsize : NaN;
}

/** Throws `resources_exhausted` when `dir`'s file system has less than `needed` bytes free. */
export async function assertRoom(dir: string, needed: number, what: string): Promise<void> {
  const free = await freeBytes(dir);
  if (Number.isNaN(free) || needed <= free) return;
  throw new CellError(
    ErrorCodes.RESOURCES_EXHAUSTED,
    `the file system of ${dir} has too little room: ${what} needs ${mib(needed)} MiB, ${mib(free)} MiB are free`,
    { neededBytes: needed, freeBytes: free },
  );
}

/** Whether an error is the file system (or a tool writing to it) running out of space. */
export function isNoSpace(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  return err instanceof Error && /No space left on device|Disk quota exceeded/.test(err.message);
}

/**
 * A full file system met part-way says so (`resources_exhausted`), instead of a raw errno or a
 * tool's last line; `doing` is what filled it ("unpacking layer 2/3 of x after 12.0 MiB").
 * Anything else is returned as it is.
 */
export async function explainNoSpace(err: unknown, dir: string, doing: string): Promise<unknown> {
  if (!isNoSpace(err) || (err instanceof CellError && err.code === ErrorCodes.RESOURCES_EXHAUSTED)) return err;
  const free = await freeBytes(dir);
  return new CellError(
    ErrorCodes.RESOURCES_EXHAUSTED,
    `the file system of ${dir} is full: ${doing}, ${Number.isNaN(free) ? 'unknown' : mib(free)} MiB are free`,
    { freeBytes: free },
    { cause: err },
  );
}
