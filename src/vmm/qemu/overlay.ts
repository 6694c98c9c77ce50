import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../../domain/errors.js';

const run = promisify(execFile);

/**
 * A qcow2 overlay whose backing file is the read-only base disk: N VMs of one image share one
 * base and each writes only its own changes.
 */
export async function createOverlay(overlayPath: string, basePath: string, baseFormat: 'raw' | 'qcow2' = 'raw'): Promise<void> {
  try {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', baseFormat, '-b', basePath, overlayPath]);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new CellError(ErrorCodes.BOOT_FAILED, `cannot create the VM's disk overlay: ${stderr || (err as Error).message}`);
  }
}
