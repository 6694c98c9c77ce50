import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CHUNK_INDEX, readChunkIndex, writeChunkIndex } from '../../src/engine/chunk-index.js';
import { MEMORY_CHUNK_BYTES } from '../../src/domain/snapshot-artifact.js';

const digest = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;

test('a chunk index reads back as written, and a broken one reads as empty or without its bad entries', async () => {
  const dir = mkdtempSync('/tmp/cellt-chunks-');
  try {
    const index = new Map([
      [0, digest(1)],
      [3 * MEMORY_CHUNK_BYTES, digest(2)],
    ]);
    await writeChunkIndex(dir, index);
    assert.deepEqual(await readChunkIndex(dir), index);

    writeFileSync(join(dir, CHUNK_INDEX), '{"chunkBytes": 4194304, "chunks": {"0": "sha256:x", "4096": "' + digest(3) + '", "8388608": "' + digest(4) + '"}}');
    assert.deepEqual(await readChunkIndex(dir), new Map([[2 * MEMORY_CHUNK_BYTES, digest(4)]]), 'only aligned offsets with sha256 digests');
    writeFileSync(join(dir, CHUNK_INDEX), '{"chunkBytes": 1048576, "chunks": {"0": "' + digest(1) + '"}}');
    assert.equal((await readChunkIndex(dir)).size, 0, 'another chunk size is not ours');
    writeFileSync(join(dir, CHUNK_INDEX), '{"chunkBytes": 4194');
    assert.equal((await readChunkIndex(dir)).size, 0, 'a torn file');
    rmSync(join(dir, CHUNK_INDEX));
    assert.equal((await readChunkIndex(dir)).size, 0, 'none');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
