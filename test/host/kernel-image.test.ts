import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { hasPvhEntryNote } from '../../src/host/elf.js';
import { uncompressedKernel } from '../../src/host/kernel-image.js';
import { bzImage, elf, pack, PVH } from '../helpers/kernel-files.js';

/**
 * Unpacking a bzImage's payload at set-up, with the real lz4, xz and zstd commands: a payload it
 * can unpack to an ELF with a PVH entry note becomes the image QEMU loads; anything else keeps
 * the bzImage and says why. (setup.test.ts checks the real Debian kernel.)
 */

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
