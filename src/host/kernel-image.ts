import { gunzipSync } from 'node:zlib';
import { hasPvhEntryNote } from './elf.js';
import { runRaw } from './exec.js';

/**
 * The guest kernel in the form QEMU boots fastest. Debian ships a bzImage whose payload the guest
 * decompresses at every boot (LZ4 in the 6.1 cloud kernel: ~200 ms under TCG). QEMU loads an
 * uncompressed ELF kernel directly when it has a PVH entry note, so set-up unpacks the payload
 * once. A payload in a format not known here, or an ELF without the note, keeps the bzImage: it
 * boots as before, only slower.
 */

/** Compression formats of a bzImage payload, by magic, and the host command that unpacks each. */
const FORMATS: { name: string; magic: Buffer; command?: [string, ...string[]] }[] = [
  { name: 'gzip', magic: Buffer.from([0x1f, 0x8b]) },
  { name: 'lz4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), command: ['lz4', '-dc'] },
  { name: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), command: ['xz', '-dc'] },
  { name: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), command: ['zstd', '-dc'] },
];

export type KernelImage = { format: 'elf'; data: Buffer; compression: string } | { format: 'bzimage'; why: string };

/** The file QEMU's -kernel loads: the unpacked ELF when it could be made, else the bzImage as it came. */
export interface BootableKernel {
  file: 'vmlinux' | 'vmlinuz';
  data: Buffer;
  format: 'elf' | 'bzimage';
  note: string;
}

export async function bootableKernel(bzImage: Buffer): Promise<BootableKernel> {
  const unpacked = await uncompressedKernel(bzImage);
  return unpacked.format === 'elf'
    ? { file: 'vmlinux', data: unpacked.data, format: 'elf', note: `unpacked from its ${unpacked.compression} payload` }
    : { file: 'vmlinuz', data: bzImage, format: 'bzimage', note: `bzImage kept: ${unpacked.why}` };
}

/** The boot protocol's header (Documentation/arch/x86/boot.rst): "HdrS" at 0x202. */
export function isBzImage(file: Buffer): boolean {
  return file.length >= 0x250 && file.toString('latin1', 0x202, 0x206) === 'HdrS';
}

export async function uncompressedKernel(bzImage: Buffer): Promise<KernelImage> {
  // The setup sectors at 0x1f1 (0 means 4), the payload's offset (from the protected-mode code) and length.
  if (!isBzImage(bzImage)) return { format: 'bzimage', why: 'not a bzImage' };
  if (bzImage.readUInt16LE(0x206) < 0x208) return { format: 'bzimage', why: 'boot protocol older than 2.08 (no payload fields)' };
  const setupSectors = bzImage[0x1f1] || 4;
  const start = (setupSectors + 1) * 512 + bzImage.readUInt32LE(0x248);
  const length = bzImage.readUInt32LE(0x24c);
  if (length < 8 || start + length > bzImage.length) return { format: 'bzimage', why: 'payload outside the file' };
  const payload = bzImage.subarray(start, start + length);
  const format = FORMATS.find((f) => payload.subarray(0, f.magic.length).equals(f.magic));
  if (!format) return { format: 'bzimage', why: `payload compressed in a format not known here (magic ${payload.subarray(0, 4).toString('hex')})` };

  // The payload ends with the uncompressed size (gzip's own trailer; appended to the others).
  const size = payload.readUInt32LE(payload.length - 4);
  let data: Buffer;
  try {
    data = format.command
      ? (await runRaw(format.command[0], format.command.slice(1), { input: payload.subarray(0, payload.length - 4) })).stdout
      : gunzipSync(payload);
  } catch (err) {
    return { format: 'bzimage', why: `${format.name} payload did not unpack: ${(err as Error).message.slice(0, 200)}` };
  }
  if (data.length !== size) return { format: 'bzimage', why: `${format.name} payload unpacked to ${data.length} bytes, not the ${size} its header says` };
  try {
    if (!hasPvhEntryNote(data)) return { format: 'bzimage', why: 'the unpacked kernel has no PVH entry note' };
  } catch (err) {
    return { format: 'bzimage', why: (err as Error).message };
  }
  return { format: 'elf', data, compression: format.name };
}
