import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { pushImage } from '../../src/image/push.js';
import { storeImage, tarOfTree } from '../image/image-builder.js';
import { startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { alive, TestHome, waitFor } from '../helpers/cell-home.js';

interface ImageJson {
  reference: string;
  sizeBytes: number;
  builtin: boolean;
}

// The image cache cap from CELL_HOME/config.json: least recently used images go after a pull,
// never one a VM uses, never the one just pulled.
describe('image cache cap', () => {
  let registry: RunningRegistry;
  let h: TestHome;
  let src: string;
  const refs: string[] = [];
  before(async () => {
    registry = await startRegistry();
    h = new TestHome();
    src = mkdtempSync('/tmp/cellt-src-');
    const root = mkdtempSync('/tmp/cellt-root-');
    mkdirSync(join(root, 'bin'));
    copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
    symlinkSync('busybox', join(root, 'bin', 'sh'));
    const bin = execFileSync('tar', ['-cf', '-', '--numeric-owner', '-C', root, 'bin'], { maxBuffer: 64 * 1024 * 1024 });
    rmSync(root, { recursive: true, force: true });
    for (const name of ['one', 'two']) {
      const base = tarOfTree({ [`etc/${name}`]: name, 'proc/': { dir: true }, 'sys/': { dir: true }, 'dev/': { dir: true }, 'tmp/': { dir: true } });
      const image = await storeImage(src, { layers: [{ tar: base, compression: 'gzip' }, { tar: bin, compression: 'gzip' }], config: { Env: ['PATH=/bin'] } });
      const ref = `${registry.host}/cache/${name}:v1`;
      await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src });
      refs.push(ref);
    }
  });
  after(async () => {
    await h.cleanup();
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  const images = async () => (JSON.parse((await h.ok(['images', '--format', 'json'])).stdout) as ImageJson[]).filter((i) => !i.builtin);
  const restartDaemon = async () => {
    const pid = Number(JSON.parse((await h.ok(['info', '--format', 'json'])).stdout).daemonPid);
    process.kill(pid, 'SIGTERM');
    assert.ok(await waitFor(() => !alive(pid), 10_000));
  };

  test('past the cap the least recently used image goes; used and just-pulled ones stay', async () => {
    const [one, two] = refs as [string, string];
    await h.ok(['pull', one]);
    const size = (await images())[0]!.sizeBytes;
    writeFileSync(join(h.home, 'config.json'), JSON.stringify({ imageCacheMaxBytes: Math.floor(size * 1.5) }));
    await restartDaemon();
    assert.match((await h.ok(['info'])).stdout, /^Images: +2 \(least recently used ones evicted past /m);
    await h.ok(['pull', two]);
    assert.deepEqual((await images()).map((i) => i.reference), [two], `${one} was evicted to make room`);

    await h.ok(['run', '-d', '--name', 'user', two, '--', 'sh']);
    await h.ok(['pull', one]);
    assert.deepEqual((await images()).map((i) => i.reference).sort(), [one, two].sort(), 'a VM keeps its image; the new one stays');
    await h.ok(['rm', '-f', 'user']);
  });

  test('a bad config.json stops celld with a clear line', async () => {
    writeFileSync(join(h.home, 'config.json'), JSON.stringify({ imageCacheMaxByte: 5 }));
    await restartDaemon();
    const r = await h.cell(['ps']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unknown setting "imageCacheMaxByte"/);
    rmSync(join(h.home, 'config.json'));
  });
});
