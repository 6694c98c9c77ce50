import { test } from 'node:test';
import assert from 'node:assert/strict';
import { OCI_MANIFEST, parseSnapshotManifest } from '../../src/domain/snapshot-artifact.js';
import { parseTemplateIndex, TEMPLATE_ANNOTATION, templateIndex, type TemplateArtifact } from '../../src/domain/template-artifact.js';

/** A pulled template index is the registry's word: what it may say is checked before any snapshot is fetched. */
const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}` as const;
const hex = 'ab'.repeat(32);
const good: TemplateArtifact = {
  document: {
    format: 1,
    name: 'web-server',
    templateId: 'web',
    role: 'server',
    cacheKey: hex,
    inputsHash: hex,
    schemaVersion: 1,
    variant: { name: 'web-server', role: 'server', profile: 'minimal', vcpus: 1, memMib: 256, dataDiskMib: 0 },
    service: { start: ['/bin/sh', '-c', 'httpd -f -p 8080'], ready: { cmd: ['/bin/sh', '-c', 'wget -q -O /dev/null http://127.0.0.1:8080/'], timeoutSec: 30 }, ports: [{ hostIp: '127.0.0.1', hostPort: 0, guestPort: 8080, protocol: 'tcp' }] },
    builtAt: '2026-12-05T10:00:00.000Z',
  },
  disk: { mediaType: OCI_MANIFEST, digest: d(1), size: 4000 },
  warm: { mediaType: OCI_MANIFEST, digest: d(2), size: 4100 },
};

function mutate(change: (doc: Record<string, any>, template: Record<string, any>) => void): Buffer {
  const doc = JSON.parse(templateIndex(good, {}).toString()) as Record<string, any>;
  const template = JSON.parse(doc.annotations[TEMPLATE_ANNOTATION]) as Record<string, any>;
  change(doc, template);
  doc.annotations[TEMPLATE_ANNOTATION] = JSON.stringify(template);
  return Buffer.from(JSON.stringify(doc));
}

test('an index push writes reads back as the same template', () => {
  assert.deepEqual(parseTemplateIndex(templateIndex(good, { 'org.opencontainers.image.title': 'web-server' }), 'r'), good);
  const cold = { ...good, warm: undefined };
  delete cold.warm;
  assert.deepEqual(parseTemplateIndex(templateIndex(cold, {}), 'r'), cold);
});

test('wrong indexes are refused with the reason', () => {
  const cases: [string, (doc: Record<string, any>, t: Record<string, any>) => void, RegExp][] = [
    ['a snapshot', (doc) => (doc.artifactType = 'application/vnd.cellvm.snapshot.v1'), /is not a cellvm template .*pull it with cell snapshot pull/],
    ['an image index', (doc) => delete doc.artifactType, /is not a cellvm template \(artifact type null\): pull an image with cell pull/],
    ['a manifest, not an index', (doc) => (doc.mediaType = OCI_MANIFEST), /not an OCI image index/],
    ['no disk', (doc) => (doc.manifests[0].annotations['dev.cellvm.template.part'] = 'warm'), /not one disk and at most one warm/],
    ['a third part', (doc) => doc.manifests.push({ ...doc.manifests[0] }), /one or two snapshots/],
    ['a part of another kind', (doc) => (doc.manifests[1].annotations['dev.cellvm.template.part'] = 'other'), /"other", not one disk/],
    ['a bad digest', (doc) => (doc.manifests[0].digest = 'sha256:00'), /not an OCI manifest descriptor/],
    ['another schema', (_, t) => (t.schemaVersion = 2), /template schema 2, this cellvm reads 1/],
    ['a name with a slash', (_, t) => (t.name = '../etc'), /name: invalid name/],
    ['a key that is no hash', (_, t) => (t.cacheKey = 'x'), /keys are not sha256 hex/],
    ['absurd resources', (_, t) => (t.variant.memMib = 1e12), /impossible CPUs, memory or data disk/],
    ['a start that is no command', (_, t) => (t.service.start = 'httpd'), /service.start is not a command/],
    ['a ready check that never gives up', (_, t) => (t.service.ready.timeoutSec = -1), /timeoutSec is not/],
    ['a port out of range', (_, t) => (t.service.ports[0].guestPort = 70000), /service.ports are not ports/],
    ['a host port on another address', (_, t) => (t.service.ports[0].hostIp = 'nowhere'), /service.ports: .*not an IPv4 address/],
  ];
  for (const [name, change, message] of cases) assert.throws(() => parseTemplateIndex(mutate(change), 'r'), message, name);
  const huge = mutate(() => {});
  const doc = JSON.parse(huge.toString()) as Record<string, any>;
  doc.annotations[TEMPLATE_ANNOTATION] = 'x'.repeat(70_000);
  assert.throws(() => parseTemplateIndex(Buffer.from(JSON.stringify(doc)), 'r'), /longer than 65536 bytes/);
  assert.throws(() => parseTemplateIndex(Buffer.from('['), 'r'), /not JSON/);
});

test('snapshot pull of a template says to pull it as a template', () => {
  assert.throws(() => parseSnapshotManifest(templateIndex(good, {}), 'r'), /is not a cellvm snapshot \(artifact type "application\/vnd\.cellvm\.template\.v1"\): pull it with cell template pull/);
});
