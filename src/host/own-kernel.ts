import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { hasPvhEntryNote } from './elf.js';
import { makeWorkDir, publishDir, readJsonIfExists, sha256Hex, writeFileSynced } from './files.js';
import { toGuestKernel, type GuestKernel, type KernelManifest } from './kernel.js';
import { bootableKernel, isBzImage, type BootableKernel } from './kernel-image.js';
import type { ProgressFn } from './types.js';

/**
 * A guest kernel the operator brings (setting `guestKernel`, CELL_GUEST_KERNEL) instead of
 * Debian's: an ELF vmlinux with a PVH entry note, or a bzImage (unpacked here when its payload's
 * format is known, as Debian's is). It loads no modules: the guest's drivers (virtio-mmio, blk,
 * console, net, rng, fs; ext4, overlayfs) must be built in, as scripts/build-guest-kernel.sh builds,
 * or the VM fails to boot with the serial console's last lines in the error.
 *
 * Copied into `<cache>/kernel-own/<sha256 of the file>/` (set-up is per content: the file can
 * change or go after; a snapshot names the kernel by digest and a fork needs the same one).
 */
const LAYOUT = 1;
const STEP = 'kernel';
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export async function adoptOwnKernel(opts: { cacheDir: string; path: string; onProgress?: ProgressFn }): Promise<GuestKernel> {
  const info = await stat(opts.path).catch((err: NodeJS.ErrnoException) => {
    throw setupError(opts.path, err.code === 'ENOENT' ? 'no such file' : err.message);
  });
  if (!info.isFile()) throw setupError(opts.path, 'not a regular file');
  const file = await readFile(opts.path);
  const sha = sha256Hex(file);
  const dir = join(opts.cacheDir, 'kernel-own', sha);
  const cached = await readJsonIfExists<KernelManifest>(join(dir, 'manifest.json'));
  if (cached?.layout === LAYOUT) return report(opts, 'cached', toGuestKernel(dir, cached));

  opts.onProgress?.({ step: STEP, status: 'start', detail: opts.path });
  const image = await bootableImage(opts.path, file);
  const work = await makeWorkDir(opts.cacheDir, 'kernel-own');
  const out = join(work, 'kernel');
  const release = `own-${sha.slice(0, 12)}`;
  const manifest: KernelManifest = {
    layout: LAYOUT,
    release,
    metaPackage: 'own',
    metaVersion: '',
    package: opts.path,
    packageVersion: '',
    debSha256: sha,
    image: { file: image.file, sha256: sha256Hex(image.data), size: image.data.length, format: image.format, note: image.note },
    modules: [],
    createdAt: new Date().toISOString(),
  };
  try {
    await mkdir(out);
    await writeFileSynced(join(out, image.file), image.data);
    // Written last: a directory with a manifest is complete.
    await writeFileSynced(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2));
    await publishDir(out, dir);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return report(opts, 'done', toGuestKernel(dir, manifest), image.note);
}

async function bootableImage(path: string, file: Buffer): Promise<BootableKernel> {
  if (file.subarray(0, 4).equals(ELF_MAGIC)) {
    let pvh: boolean;
    try {
      pvh = hasPvhEntryNote(file);
    } catch (err) {
      throw setupError(path, (err as Error).message);
    }
    // QEMU boots an ELF kernel only through its PVH entry point (CONFIG_PVH).
    if (!pvh) throw setupError(path, 'an ELF kernel without a PVH entry note (build it with CONFIG_PVH=y), or give its bzImage');
    return { file: 'vmlinux', data: file, format: 'elf', note: 'ELF with a PVH entry' };
  }
  if (!isBzImage(file)) throw setupError(path, 'neither an ELF vmlinux nor a bzImage');
  return bootableKernel(file);
}

function report(opts: { onProgress?: ProgressFn }, status: 'cached' | 'done', kernel: GuestKernel, note?: string): GuestKernel {
  opts.onProgress?.({ step: STEP, status, detail: `${kernel.release} (your own, no modules)${note ? `: ${note}` : ''}` });
  return kernel;
}

function setupError(path: string, why: string): CellError {
  return new CellError(ErrorCodes.SETUP_FAILED, `guest kernel ${path}: ${why}`);
}
