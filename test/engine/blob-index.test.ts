import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BLOB_INDEX, readBlobIndex, writeBlobIndex } from '../../src/engine/blob-index.js';
import { MEMORY_CHUNK_BYTES } from '../../src/domain/snapshot-artifact.js';

const digest = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}` as const;

test('a blob index reads back as written, and a broken one reads as empty or without its bad entries', async () => {
  const dir = mkdtempSync('/tmp/cellt-blobs-');
  const write = (doc: unknown) => writeFileSync(join(dir, BLOB_INDEX), typeof doc === 'string' ? doc : JSON.stringify(doc));
  try {
    const index = {
      chunks: new Map([
        [0, digest(1)],
        [3 * MEMORY_CHUNK_BYTES, digest(2)],
      ]),
      disk: [{ digest: digest(5), size: 3_500_000 }, { digest: digest(6), size: 200_000 }],
    };
    await writeBlobIndex(dir, index);
    assert.deepEqual(await readBlobIndex(dir), index);

    write({ chunkBytes: MEMORY_CHUNK_BYTES, chunks: { 0: 'sha256:x', 4096: digest(3), [2 * MEMORY_CHUNK_BYTES]: digest(4) }, disk: [{ digest: digest(5), size: -1 }] });
    assert.deepEqual(await readBlobIndex(dir), { chunks: new Map([[2 * MEMORY_CHUNK_BYTES, digest(4)]]), disk: [] }, 'only aligned offsets with sha256 digests; a disk list with a bad entry is no list');
    write({ chunkBytes: 1048576, chunks: { 0: digest(1) }, disk: [{ digest: digest(5), size: 1 }] });
    assert.deepEqual(await readBlobIndex(dir), { chunks: new Map(), disk: [] }, 'another chunk size is not ours');
    write('{"chunkBytes": 4194');
    assert.deepEqual(await readBlobIndex(dir), { chunks: new Map(), disk: [] }, 'a torn file');
    rmSync(join(dir, BLOB_INDEX));
    assert.deepEqual(await readBlobIndex(dir), { chunks: new Map(), disk: [] }, 'none');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
