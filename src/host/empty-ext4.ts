import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { publishFile } from './files.js';

const run = promisify(execFile);

/** Largest data disk a VM may ask for (the image is sparse; this bounds a typo, not the host). */
export const MAX_DATA_DISK_MIB = 1024 * 1024;

/**
 * An empty ext4 file system of `mib` MiB, made once per size and shared read-only by every data
 * disk of that size (each VM writes to its own qcow2 overlay on top). Sparse: it costs only the
 * file system's metadata.
 */
export async function ensureEmptyExt4(cacheDir: string, mib: number): Promise<string> {
  if (!Number.isInteger(mib) || mib < 1 || mib > MAX_DATA_DISK_MIB) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `a data disk of ${mib} MiB is out of range: 1 to ${MAX_DATA_DISK_MIB} MiB`);
  }
  const dir = join(cacheDir, 'data-disks');
  const path = join(dir, `ext4-${mib}m.raw`);
  if (existsSync(path)) return path;
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.tmp-${process.pid}-${Date.now()}-${mib}m.raw`);
  try {
    await writeEmptyExt4(tmp, mib * 1024 * 1024, 'cell-data', 0o644);
    await publishFile(tmp, path, 0o444);
    return path;
  } catch (err) {
    await rm(tmp, { force: true });
    if (err instanceof CellError) throw err;
    throw new CellError(ErrorCodes.SETUP_FAILED, `could not make an empty ${mib} MiB ext4 data disk: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
  }
}

/**
 * A new sparse file at `path` (made exclusively, with `mode`) of `bytes`, holding an empty ext4
 * labelled `label`, synced: for data disks and named volumes, published by their callers.
 */
export async function writeEmptyExt4(path: string, bytes: number, label: string, mode: number): Promise<void> {
  const handle = await open(path, 'wx', mode);
  await handle.truncate(bytes);
  await handle.close();
  // lazy_itable_init: inode tables are zeroed by the guest kernel later, not here.
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', label, '-E', 'lazy_itable_init=1,lazy_journal_init=1', path]);
  const sync = await open(path, 'r+');
  await sync.sync();
  await sync.close();
}
