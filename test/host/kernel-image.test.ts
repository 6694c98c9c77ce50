import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { hasPvhEntryNote } from '../../src/host/elf.js';
import { uncompressedKernel } from '../../src/host/kernel-image.js';

/**
 * Unpacking a bzImage's payload at set-up, with the real lz4, xz and zstd commands: a payload it
 * can unpack to an ELF with a PVH entry note becomes the image QEMU loads; anything else keeps
 * the bzImage and says why. (setup.test.ts checks the real Debian kernel.)
 */

/** A minimal ELF64 with one PT_NOTE segment holding `notes`. */
function elf(notes: { name: string; type: number; desc: Buffer }[]): Buffer {
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
const PVH = { name: 'Xen', type: 18, desc: Buffer.from([0, 0, 0, 1]) };

/** A bzImage-shaped file: setup sectors, the "HdrS" header with the payload's place, the payload. */
function bzImage(payload: Buffer): Buffer {
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
const pack = (cmd: string, args: string[], data: Buffer) => withSize(execFileSync(cmd, args, { input: data }), data.length);

describe('uncompressedKernel', () => {
  const kernel = elf([{ name: 'GNU', type: 3, desc: Buffer.alloc(20, 7) }, PVH]);

  it('finds the PVH note among others, and not where there is none', () => {
    assert.equal(hasPvhEntryNote(kernel), true);
    assert.equal(hasPvhEntryNote(elf([{ name: 'GNU', type: 3, desc: Buffer.alloc(20) }])), false);
    assert.equal(hasPvhEntryNote(elf([{ name: 'Xen', type: 17, desc: Buffer.alloc(4) }])), false);
  });

  for (const [name, payload] of [
    ['gzip', () => gzipSync(kernel)],
    ['lz4', () => pack('lz4', ['-l', '-c'], kernel)],
    ['xz', () => pack('xz', ['-c', '--check=crc32'], kernel)],
    ['zstd', () => pack('zstd', ['-c', '-q'], kernel)],
  ] as const) {
    it(`unpacks a ${name} payload to the ELF`, async () => {
      const image = await uncompressedKernel(bzImage(payload()));
      assert.equal(image.format, 'elf', image.format === 'bzimage' ? image.why : '');
      assert.ok(image.format === 'elf' && image.data.equals(kernel) && image.compression === name);
    });
  }

  it('keeps the bzImage, saying why, when the payload cannot be used', async () => {
    const why = async (file: Buffer) => {
      const image = await uncompressedKernel(file);
      assert.equal(image.format, 'bzimage');
      return image.format === 'bzimage' ? image.why : '';
    };
    assert.match(await why(Buffer.alloc(4096)), /not a bzImage/);
    assert.match(await why(bzImage(Buffer.from('BZh91AY&SY not known here'))), /format not known here \(magic 425a6839\)/);
    assert.match(await why(bzImage(gzipSync(elf([{ name: 'GNU', type: 3, desc: Buffer.alloc(8) }])))), /no PVH entry note/);
    const lz4 = pack('lz4', ['-l', '-c'], kernel);
    assert.match(await why(bzImage(Buffer.concat([lz4.subarray(0, lz4.length - 20), lz4.subarray(-4)]))), /lz4 payload (did not unpack|unpacked to \d+ bytes, not the \d+)/);
    assert.match(await why(bzImage(gzipSync(Buffer.from('not an elf at all, but long enough to read past sixty-four bytes of header')))), /not an ELF file/);
    const header = bzImage(gzipSync(kernel));
    header.writeUInt32LE(header.length, 0x24c);
    assert.match(await why(header), /payload outside the file/);
  });
});
