import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ArtifactTypes,
  checkMemoryLayout,
  MEMORY_CHUNK_BYTES,
  OFFSET_ANNOTATION,
  PAGE_RECORD_BYTES,
  pageOffset,
  parseSnapshotManifest,
  snapshotManifest,
  type SnapshotArtifact,
} from '../../src/domain/snapshot-artifact.js';

/** A pulled manifest is the registry's word: every way it can be wrong is refused before any RAM is fetched. */
const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}` as const;
const good: SnapshotArtifact = {
  config: { mediaType: ArtifactTypes.CONFIG, digest: d(1), size: 900 },
  state: { mediaType: ArtifactTypes.STATE, digest: d(2), size: 66_000 },
  disk: { mediaType: ArtifactTypes.DISK, digest: d(3), size: 3_000_000 },
  diskDeltas: [
    { mediaType: ArtifactTypes.DISK_DELTA, digest: d(5), size: 200_000 },
    { mediaType: ArtifactTypes.DISK_DELTA, digest: d(6), size: 100_000 },
  ],
  memory: [0, 2, 5].map((i) => ({ offset: i * MEMORY_CHUNK_BYTES, desc: { mediaType: ArtifactTypes.MEMORY, digest: d(10 + i), size: MEMORY_CHUNK_BYTES, annotations: { [OFFSET_ANNOTATION]: String(i * MEMORY_CHUNK_BYTES) } } })),
  pages: { mediaType: ArtifactTypes.MEMORY_PAGES, digest: d(4), size: 3 * PAGE_RECORD_BYTES },
};
const MIB_64 = 64 * 1024 * 1024;

function mutate(change: (doc: Record<string, any>) => void): Buffer {
  const doc = JSON.parse(snapshotManifest(good, { a: 'b' }).toString()) as Record<string, any>;
  change(doc);
  return Buffer.from(JSON.stringify(doc));
}

test('a manifest push writes reads back as the same artifact', () => {
  const parsed = parseSnapshotManifest(snapshotManifest(good, {}), 'r');
  assert.deepEqual(parsed, good);
  checkMemoryLayout(parsed, MIB_64, 'r');
});

test('wrong documents are refused with the reason', () => {
  const cases: [string, (doc: Record<string, any>) => void, RegExp][] = [
    ['an image', (doc) => delete doc.artifactType, /is not a cellvm snapshot \(artifact type null\)/],
    ['another config type', (doc) => (doc.config.mediaType = 'application/vnd.oci.image.config.v1+json'), /its config is application\/vnd\.oci\.image\.config/],
    ['a bad digest', (doc) => (doc.layers[0].digest = 'sha256:xyz'), /digest is not sha256/],
    ['a huge state', (doc) => (doc.layers[0].size = 1e12), /device state|declares/],
    ['two disks', (doc) => doc.layers.push({ ...doc.layers[1] }), /two disk layers/],
    ['no disk', (doc) => doc.layers.splice(1, 1), /device state or disk is missing/],
    ['an unknown layer', (doc) => doc.layers.push({ mediaType: 'text/plain', digest: d(9), size: 1 }), /unknown type text\/plain/],
    ['a misaligned chunk', (doc) => (doc.layers[5].annotations[OFFSET_ANNOTATION] = '4096'), /not a multiple of/],
    ['an offset that is no number', (doc) => (doc.layers[5].annotations[OFFSET_ANNOTATION] = '1e9'), /not a multiple of/],
    ['two chunks at one place', (doc) => (doc.layers[6].annotations[OFFSET_ANNOTATION] = '0'), /two RAM chunks at offset 0/],
    ['an oversized chunk', (doc) => (doc.layers[5].size = MEMORY_CHUNK_BYTES + 64 * 1024 + 1), /RAM chunk is \d+ bytes/],
    ['a torn pages layer', (doc) => (doc.layers.at(-1).size = PAGE_RECORD_BYTES + 1), /not whole records/],
    ['a negative size', (doc) => (doc.layers[2].size = -1), /declares -1 bytes/],
    ['too many disk deltas', (doc) => doc.layers.push(...Array.from({ length: 31 }, (_, i) => ({ mediaType: ArtifactTypes.DISK_DELTA, digest: d(100 + i), size: 1 }))), /more than 32 disk deltas/],
  ];
  for (const [name, change, message] of cases) assert.throws(() => parseSnapshotManifest(mutate(change), 'r'), message, name);
  assert.throws(() => parseSnapshotManifest(Buffer.from('{'), 'r'), /not JSON/);
});

test('chunks and pages must fit the RAM the config declares', () => {
  const parsed = parseSnapshotManifest(snapshotManifest(good, {}), 'r');
  assert.throws(() => checkMemoryLayout(parsed, 5 * MEMORY_CHUNK_BYTES, 'r'), /lies past its/);
  // The last chunk of a RAM that is not whole chunks is shorter.
  const tail = { ...parsed, memory: [{ offset: 0, desc: { ...parsed.memory[0]!.desc, size: 1024 * 1024 } }], pages: undefined };
  checkMemoryLayout(tail, 1024 * 1024, 'r');
  const record = Buffer.alloc(8);
  record.writeBigUInt64LE(BigInt(MIB_64 - 4096));
  assert.equal(pageOffset(record, MIB_64, 'r'), MIB_64 - 4096);
  record.writeBigUInt64LE(BigInt(MIB_64));
  assert.throws(() => pageOffset(record, MIB_64, 'r'), /is not a page of/);
  record.writeBigUInt64LE(12n);
  assert.throws(() => pageOffset(record, MIB_64, 'r'), /is not a page of/);
  record.writeBigUInt64LE(2n ** 64n - 4096n);
  assert.throws(() => pageOffset(record, MIB_64, 'r'), /is not a page of/);
});
