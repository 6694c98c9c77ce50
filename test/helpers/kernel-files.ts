import { execFileSync } from 'node:child_process';

/** Kernel-shaped files for set-up tests: a minimal ELF64 with notes, a bzImage around a payload. */

/** A minimal ELF64 with one PT_NOTE segment holding `notes`. */
export function elf(notes: { name: string; type: number; desc: Buffer }[]): Buffer {
  const body = Buffer.concat(
    notes.map((n) => {
      const name = Buffer.from(`${n.name}\0`);
      const head = Buffer.alloc(12);
      head.writeUInt32LE(name.length, 0);
      head.writeUInt32LE(n.desc.length, 4);
      head.writeUInt32LE(n.type, 8);
      return Buffer.concat([head, pad4(name), pad4(n.desc)]);
    }),
  );
  const header = Buffer.alloc(64);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(header);
  header.writeBigUInt64LE(64n, 0x20); // program headers right after the ELF header
  header.writeUInt16LE(56, 0x36);
  header.writeUInt16LE(1, 0x38);
  const ph = Buffer.alloc(56);
  ph.writeUInt32LE(4, 0); // PT_NOTE
  ph.writeBigUInt64LE(120n, 0x08);
  ph.writeBigUInt64LE(BigInt(body.length), 0x20);
  return Buffer.concat([header, ph, body]);
}
const pad4 = (b: Buffer) => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
export const PVH = { name: 'Xen', type: 18, desc: Buffer.from([0, 0, 0, 1]) };

/** A bzImage-shaped file: setup sectors, the "HdrS" header with the payload's place, the payload. */
export function bzImage(payload: Buffer): Buffer {
  const setupSectors = 3;
  const pm = (setupSectors + 1) * 512;
  const file = Buffer.alloc(pm + 100 + payload.length);
  file[0x1f1] = setupSectors;
  file.write('HdrS', 0x202, 'latin1');
  file.writeUInt16LE(0x20f, 0x206);
  file.writeUInt32LE(100, 0x248);
  file.writeUInt32LE(payload.length, 0x24c);
  payload.copy(file, pm + 100);
  return file;
}
const withSize = (compressed: Buffer, size: number) => {
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE(size);
  return Buffer.concat([compressed, trailer]);
};
export const pack = (cmd: string, args: string[], data: Buffer) => withSize(execFileSync(cmd, args, { input: data }), data.length);

