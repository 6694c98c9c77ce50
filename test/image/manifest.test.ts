/**
 * Manifest and index parsing (src/image/manifest.ts) on hostile documents: a registry or an
 * archive decides every byte of them. A document is either refused with a CellError that has a
 * code, or comes back with the types the rest of the pull relies on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import { MAX_LAYERS, parseManifest, type Descriptor } from '../../src/image/manifest.js';
import { isDigest } from '../../src/image/digest.js';
import { parseDockerSaveManifest } from '../../src/image/archive/import.js';
import { MediaTypes, isLayerType } from '../../src/image/media-types.js';
import { fuzzParams } from '../agent/fuzz-runs.js';

const D = (c: string) => `sha256:${c.repeat(64)}`;
const config = { mediaType: MediaTypes.OCI_CONFIG, digest: D('c'), size: 10 };
const layer = { mediaType: MediaTypes.OCI_LAYER_GZIP, digest: D('1'), size: 20 };
const child = { mediaType: MediaTypes.OCI_MANIFEST, digest: D('2'), size: 30, platform: { os: 'linux', architecture: 'amd64' } };
const manifest = { schemaVersion: 2, mediaType: MediaTypes.OCI_MANIFEST, config, layers: [layer] };
const index = { schemaVersion: 2, mediaType: MediaTypes.OCI_INDEX, manifests: [child] };
const json = (v: unknown) => Buffer.from(JSON.stringify(v));

function refused(doc: unknown, code: string, message: RegExp, contentType?: string): void {
  assert.throws(
    () => parseManifest(json(doc), 'm', contentType),
    (err: unknown) => err instanceof CellError && err.code === code && message.test(err.message),
    JSON.stringify(doc).slice(0, 200),
  );
}

test('a document with both "layers" and "manifests" is refused, whatever it says it is (CVE-2021-41190); well-formed ones parse', () => {
  const both = { schemaVersion: 2, config, layers: [layer], manifests: [child] };
  refused(both, 'unsupported_manifest', /both "layers" and "manifests"/);
  refused({ ...both, mediaType: MediaTypes.OCI_MANIFEST }, 'unsupported_manifest', /both "layers" and "manifests"/);
  refused({ ...both, mediaType: MediaTypes.OCI_INDEX }, 'unsupported_manifest', /both "layers" and "manifests"/);
  refused({ ...both, mediaType: MediaTypes.DOCKER_LIST }, 'unsupported_manifest', /both/, MediaTypes.DOCKER_LIST);
  // An index that also carries a config, and a document served as the other kind.
  refused({ ...index, config }, 'unsupported_manifest', /ambiguous/);
  refused(manifest, 'unsupported_manifest', /served as .*index/, MediaTypes.OCI_INDEX);
  refused(index, 'unsupported_manifest', /served as .*manifest/, MediaTypes.DOCKER_MANIFEST);

  // Well-formed manifests and indexes parse as before.
  const m = parseManifest(json(manifest), 'm', MediaTypes.OCI_MANIFEST);
  assert.equal(m.kind, 'manifest');
  const i = parseManifest(json(index), 'i', `${MediaTypes.OCI_INDEX}; charset=utf-8`);
  assert.equal(i.kind, 'index');
  // The flavours of one kind mix (an OCI index listing a Docker manifest), and documents without
  // a mediaType take the one they were served as, or their shape.
  assert.equal(parseManifest(json({ ...manifest, mediaType: MediaTypes.DOCKER_MANIFEST }), 'm', MediaTypes.OCI_MANIFEST).kind, 'manifest');
  assert.equal(parseManifest(json({ schemaVersion: 2, config, layers: [] }), 'm', 'application/json').kind, 'manifest');
  assert.equal(parseManifest(json({ schemaVersion: 2, manifests: [] }), 'm').kind, 'index');
  const annotated = parseManifest(json({ ...index, manifests: [{ ...child, annotations: { 'org.opencontainers.image.ref.name': 'v1' } }] }), 'i');
  assert.equal(annotated.kind === 'index' && annotated.manifests[0]!.annotations?.['org.opencontainers.image.ref.name'], 'v1');
});

test('ill-typed fields are refused, not trusted', () => {
  refused([manifest], 'registry_error', /not a JSON object/);
  refused({ ...manifest, mediaType: 7 }, 'registry_error', /mediaType/);
  refused({ ...manifest, schemaVersion: 3 }, 'registry_error', /schemaVersion/);
  refused({ ...manifest, schemaVersion: '2' }, 'registry_error', /schemaVersion/);
  refused({ ...index, manifests: [{ ...child, annotations: { a: 1 } }] }, 'registry_error', /annotations/);
  refused({ ...index, manifests: [{ ...child, annotations: ['x'] }] }, 'registry_error', /annotations/);
  refused({ ...manifest, layers: [{ ...layer, size: -1 }] }, 'registry_error', /invalid size/);
  refused({ ...manifest, layers: [{ ...layer, size: 2 ** 60 }] }, 'registry_error', /invalid size/);
  refused({ ...manifest, layers: Array.from({ length: MAX_LAYERS + 1 }, () => layer) }, 'size_limit', /layers/);
});

/** Every descriptor the parser returns is one the pull can use as is. */
function checkDescriptor(d: Descriptor): void {
  assert.equal(typeof d.mediaType, 'string');
  assert.ok(isDigest(d.digest), d.digest);
  assert.ok(Number.isSafeInteger(d.size) && d.size >= 0);
  if (d.platform) assert.ok(typeof d.platform.os === 'string' && typeof d.platform.architecture === 'string');
  if (d.annotations) for (const v of Object.values(d.annotations)) assert.equal(typeof v, 'string');
}

/** Parses or refuses with a CellError; what parses has the shape promised. */
function parsesSafely(bytes: Buffer, contentType?: string): void {
  let m;
  try {
    m = parseManifest(bytes, 'fuzzed', contentType);
  } catch (err) {
    assert.ok(err instanceof CellError, `not a CellError: ${String(err)}`);
    assert.ok((Object.values(ErrorCodes) as string[]).includes(err.code));
    return;
  }
  if (m.kind === 'index') {
    for (const d of m.manifests) checkDescriptor(d);
  } else {
    checkDescriptor(m.config);
    assert.ok(m.layers.length <= MAX_LAYERS);
    for (const l of m.layers) {
      checkDescriptor(l);
      assert.ok(isLayerType(l.mediaType));
    }
  }
  // Never both: what parsed as one kind did not also carry the other's list.
  const doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  assert.ok(!(doc.layers !== undefined && doc.manifests !== undefined), 'an ambiguous document was accepted');
}

const mediaTypeArb = fc.oneof(fc.constantFrom(...Object.values(MediaTypes)), fc.string({ maxLength: 20 }));
const valueArb = fc.oneof(fc.jsonValue({ maxDepth: 2 }), mediaTypeArb, fc.constantFrom(D('a'), 'sha512:abc', 10, -1, 2 ** 60, 1.5));
const descriptorArb = fc.dictionary(fc.constantFrom('mediaType', 'digest', 'size', 'platform', 'annotations', 'urls'), valueArb, { maxKeys: 6 });
const validDescriptorArb = fc.record({
  mediaType: mediaTypeArb,
  digest: fc.constantFrom(D('a'), D('b'), 'sha256:short', 'md5:x'),
  size: fc.oneof(fc.nat(), fc.constantFrom(-1, 1.5, 2 ** 60)),
  platform: fc.option(fc.record({ os: fc.constantFrom('linux', 'windows'), architecture: fc.constantFrom('amd64', 'arm64'), variant: fc.option(fc.string({ maxLength: 3 }), { nil: undefined }) }), { nil: undefined }),
  annotations: fc.option(fc.dictionary(fc.string({ maxLength: 5 }), fc.oneof(fc.string({ maxLength: 5 }), fc.integer())), { nil: undefined }),
});
const documentArb = fc.record(
  {
    schemaVersion: fc.oneof(fc.constantFrom(1, 2, 3), valueArb),
    mediaType: fc.oneof(mediaTypeArb, valueArb),
    config: fc.oneof(validDescriptorArb, descriptorArb, valueArb),
    layers: fc.oneof(fc.array(fc.oneof(validDescriptorArb, descriptorArb), { maxLength: 4 }), valueArb),
    manifests: fc.oneof(fc.array(fc.oneof(validDescriptorArb, descriptorArb), { maxLength: 4 }), valueArb),
  },
  { requiredKeys: [] },
);

test('fuzzed manifests and indexes: a CellError with a code, or a result of the promised shape', () => {
  fc.assert(
    fc.property(documentArb, fc.option(mediaTypeArb, { nil: undefined }), (doc, contentType) => {
      parsesSafely(json(doc), contentType);
    }),
    fuzzParams(500),
  );
  // Raw bytes: not JSON, truncated JSON, deep nesting.
  fc.assert(
    fc.property(fc.oneof(fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)), documentArb.map((d) => json(d).subarray(0, 30))), (bytes) => {
      try {
        parseManifest(bytes, 'raw');
      } catch (err) {
        assert.ok(err instanceof CellError, `not a CellError: ${String(err)}`);
      }
    }),
    fuzzParams(300),
  );
  assert.throws(() => parseManifest(Buffer.from(`${'['.repeat(100_000)}${']'.repeat(100_000)}`), 'deep'), CellError);
});

test("a docker save archive's manifest.json is checked for the types import relies on", () => {
  const ok = [{ Config: 'c.json', RepoTags: ['app:1'], Layers: ['l/layer.tar'] }];
  assert.deepEqual(parseDockerSaveManifest(json(ok), 'manifest.json'), ok);
  assert.deepEqual(parseDockerSaveManifest(json([{ Config: 'c', Layers: [] }]), 'm'), [{ Config: 'c', Layers: [], RepoTags: null }]);
  // The first three were TypeErrors (reported as "internal") in the import before.
  for (const [doc, code] of [
    [[null], 'invalid_argument'],
    [[{ Config: 'c', Layers: [1] }], 'invalid_argument'],
    [[{ Config: 'c', Layers: ['l'], RepoTags: 'app:1' }], 'invalid_argument'],
    [[{ Config: 'c', Layers: ['l'] }, 7], 'invalid_argument'],
    [{ Config: 'c', Layers: [] }, 'image_not_found'],
    [[], 'image_not_found'],
    [[{ Config: 'c', Layers: Array.from({ length: MAX_LAYERS + 1 }, () => 'l') }], 'size_limit'],
  ] as const) {
    assert.throws(() => parseDockerSaveManifest(json(doc), 'm'), (err: unknown) => err instanceof CellError && err.code === code, JSON.stringify(doc).slice(0, 80));
  }
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.array(fc.dictionary(fc.constantFrom('Config', 'RepoTags', 'Layers'), fc.jsonValue({ maxDepth: 1 })), { maxLength: 3 })), (doc) => {
      try {
        for (const e of parseDockerSaveManifest(json(doc), 'm')) {
          assert.equal(typeof e.Config, 'string');
          assert.ok(e.Layers.every((l) => typeof l === 'string'));
          assert.ok(e.RepoTags === null || e.RepoTags.every((t) => typeof t === 'string'));
        }
      } catch (err) {
        assert.ok(err instanceof CellError, `not a CellError: ${String(err)}`);
      }
    }),
    fuzzParams(300),
  );
});
