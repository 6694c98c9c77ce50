/**
 * GNU sparse files as `tar --sparse` writes them (snapshot archives' RAM): read with `gnuSparse`,
 * their map, extension blocks included, gives the file's length and the blocks its data takes,
 * and the entry after one is read where it starts. Without the option they stay refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ByteSource } from '../../src/image/unpack/byte-source.js';
import { openTarStream } from '../../src/image/unpack/decompress.js';
import { readTar, type TarHeader } from '../../src/image/unpack/tar-reader.js';

async function headers(file: string, gnuSparse: boolean): Promise<{ header: TarHeader; body: string }[]> {
  const stream = await openTarStream(file, file);
  const out: { header: TarHeader; body: string }[] = [];
  for await (const entry of readTar(new ByteSource(stream.bytes, file), file, { gnuSparse })) {
    const chunks: Buffer[] = [];
    for await (const c of entry.body()) chunks.push(c);
    out.push({ header: entry.header, body: Buffer.concat(chunks).toString('latin1') });
  }
  return out;
}

test('a sparse file of 64 scattered pages: its length, its 64 blocks, and the next entry in place', async () => {
  const dir = mkdtempSync('/tmp/cellt-sparse-');
  try {
    const memory = join(dir, 'memory');
    writeFileSync(memory, '');
    truncateSync(memory, 64 * 1024 * 1024);
    const fd = openSync(memory, 'r+');
    // 64 data runs: more than the header's 4 map entries and one extension block's 21.
    for (let i = 0; i < 64; i++) writeSync(fd, Buffer.alloc(4096, 0x41 + (i % 26)), 0, 4096, i * 1024 * 1024 + 8192);
    closeSync(fd);
    writeFileSync(join(dir, 'state'), 'after the sparse one');
    const file = join(dir, 'a.tar');
    execFileSync('tar', ['--sparse', '-cf', file, '-C', dir, 'memory', 'state']);

    const [mem, state] = await headers(file, true);
    assert.equal(mem!.header.path, 'memory');
    assert.equal(mem!.header.type, 'file');
    assert.deepEqual(mem!.header.sparse, { realSize: 64 * 1024 * 1024, allocatedBytes: 64 * 4096 });
    assert.equal(mem!.header.size, 64 * 4096, 'its body is the data stored, not the file');
    assert.equal(state!.header.path, 'state');
    assert.equal(state!.body, 'after the sparse one');

    await assert.rejects(headers(file, false), /GNU sparse file memory is not supported/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
