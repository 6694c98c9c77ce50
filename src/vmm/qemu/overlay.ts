import { execFile } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../../domain/errors.js';

const run = promisify(execFile);

/**
 * A new overlay of a base is the same bytes every time (qcow2's header, tables and the backing
 * file's name and format; no id or time in it), so the first one's bytes are kept and written for
 * the next: running qemu-img costs a boot or fork ~25 ms. Keyed by the base's path, format, size
 * and change time, so a base replaced at the same path gets a fresh one. Few bases are in use at once.
 */
const BLANK_OVERLAYS_KEPT = 32;
const blankOverlays = new Map<string, Buffer>();

/**
 * A qcow2 overlay whose backing file is the read-only base disk: N VMs of one image share one
 * base and each writes only its own changes. `overlayPath` must not exist.
 */
export async function createOverlay(overlayPath: string, basePath: string, baseFormat: 'raw' | 'qcow2' = 'raw'): Promise<void> {
  const base = await stat(basePath).catch(() => null);
  const key = base ? `${baseFormat}\0${basePath}\0${base.size}\0${base.ctimeMs}\0${base.ino}` : null;
  const blank = key ? blankOverlays.get(key) : undefined;
  if (blank) {
    await writeFile(overlayPath, blank, { flag: 'wx' });
    return;
  }
  try {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', baseFormat, '-b', basePath, overlayPath]);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new CellError(ErrorCodes.BOOT_FAILED, `cannot create the VM's disk overlay: ${stderr || (err as Error).message}`);
  }
  if (!key) return;
  const bytes = await readFile(overlayPath);
  if (blankOverlays.size >= BLANK_OVERLAYS_KEPT) blankOverlays.delete(blankOverlays.keys().next().value!);
  blankOverlays.set(key, bytes);
}
