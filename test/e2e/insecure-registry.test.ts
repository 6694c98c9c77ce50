import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { pushImage } from '../../src/image/push.js';
import { storeImage, tarOfTree } from '../image/image-builder.js';
import { startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { createNetns, type TestNetns } from '../helpers/netns.js';
import { TestHome } from '../helpers/cell-home.js';

// Plain http only for loopback and registries named with --insecure-registry: a registry on a
// non-loopback address, inside a network namespace this test makes.
describe('--insecure-registry', () => {
  let netns: TestNetns;
  let registry: RunningRegistry;
  let h: TestHome;
  let src: string;
  let ref = '';
  before(async () => {
    netns = createNetns();
    registry = await startRegistry({ kind: 'none' }, { address: netns.nsAddress, netns: netns.name });
    h = new TestHome();
    src = mkdtempSync('/tmp/cellt-src-');
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ 'etc/motd': 'over plain http\n' }), compression: 'gzip' }] });
    ref = `${registry.host}/e2e/plain:v1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, insecureRegistries: [registry.host] });
  });
  after(async () => {
    await h?.cleanup();
    await registry?.stop();
    netns?.remove();
    rmSync(src, { recursive: true, force: true });
  });

  test('a registry that is not on loopback gets https unless named insecure', async () => {
    const refused = await h.cell(['pull', ref]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`^error: .*${registry.host.replace(/\./g, '\\.')}`));
    assert.equal(refused.stderr.trim().split('\n').length, 1);
    const images = JSON.parse((await h.ok(['images', '--format', 'json'])).stdout) as { reference: string }[];
    assert.ok(!images.some((i) => i.reference === ref), 'nothing was stored');

    const pulled = await h.ok(['pull', '--insecure-registry', registry.host, ref]);
    assert.match(pulled.stdout, /sha256:[0-9a-f]{64}/);
  });
});
