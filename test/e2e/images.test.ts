import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pushImage } from '../../src/image/push.js';
import { storeImage } from '../image/image-builder.js';
import { startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { TestHome } from '../helpers/cell-home.js';

/** A layer made by GNU tar from a real directory (binary files, symlinks, modes). */
function tarOf(build: (dir: string) => void): Buffer {
  const dir = mkdtempSync('/tmp/cellt-layer-');
  try {
    build(dir);
    return execFileSync('tar', ['-cf', '-', '--numeric-owner', '-C', dir, '.'], { maxBuffer: 64 * 1024 * 1024 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Images end to end: a real registry on loopback, pulled by celld, booted as VMs.
describe('images from a registry', () => {
  let registry: RunningRegistry;
  let h: TestHome;
  let src: string;
  let ref = '';
  before(async () => {
    registry = await startRegistry();
    h = new TestHome();
    src = mkdtempSync('/tmp/cellt-src-');
    const base = tarOf((d) => {
      mkdirSync(join(d, 'bin'));
      copyFileSync('/bin/busybox', join(d, 'bin', 'busybox'));
      for (const applet of ['sh', 'cat', 'echo', 'pwd', 'ls']) symlinkSync('busybox', join(d, 'bin', applet));
      for (const dir of ['etc', 'proc', 'sys', 'dev', 'tmp', 'root']) mkdirSync(join(d, dir));
    });
    const app = tarOf((d) => {
      mkdirSync(join(d, 'data'));
      writeFileSync(join(d, 'data', 'hello.txt'), 'hello from a pulled image\n');
    });
    const image = await storeImage(src, {
      layers: [
        { tar: base, compression: 'gzip' },
        { tar: app, compression: 'zstd' },
      ],
      config: { Cmd: ['cat', 'hello.txt'], Env: ['PATH=/bin', 'FOO=bar'], WorkingDir: '/data' },
    });
    ref = `127.0.0.1:${registry.port}/e2e/hello:v1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src });
  });
  after(async () => {
    await h.cleanup();
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  test('pull, then run honours the image Cmd, Env and WorkingDir', async () => {
    const pulled = await h.ok(['pull', ref]);
    assert.match(pulled.stdout, new RegExp(`^${ref.replace(/[.:/]/g, '\\$&')} sha256:[0-9a-f]{64}\\n$`));
    const images = JSON.parse((await h.ok(['images', '--format', 'json'])).stdout) as { reference: string }[];
    assert.ok(images.some((i) => i.reference === ref));
    const r = await h.ok(['run', '--rm', ref]);
    assert.equal(r.stdout, 'hello from a pulled image\n');
    const env = await h.ok(['run', '--rm', '-e', 'EXTRA=1', ref, '--', 'sh', '-c', 'echo $FOO $EXTRA $(pwd)']);
    assert.equal(env.stdout, 'bar 1 /data\n');
  });

  test('push copies a local image to another repository (checked with skopeo)', async () => {
    const target = `127.0.0.1:${registry.port}/e2e/copy:v2`;
    const pushed = await h.ok(['push', ref, target]);
    const digest = pushed.stdout.trim().split(' ')[1];
    const inspected = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${target}`], { encoding: 'utf8' })) as { Digest: string };
    assert.equal(inspected.Digest, digest);
  });

  test('rmi is refused while a VM uses the image, and works after', async () => {
    await h.ok(['run', '-d', '--name', 'user', ref, '--', 'true']);
    const refused = await h.cell(['rmi', ref]);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /in use by VM user/);
    await h.ok(['rm', '-f', 'user']);
  });

  test('export then import round-trips; a later run does not need the registry', async () => {
    const file = join(h.home, 'hello.tar');
    await h.ok(['image', 'export', ref, file]);
    assert.ok(existsSync(file));
    await registry.stop();
    const r = await h.ok(['run', '--rm', ref]);
    assert.equal(r.stdout, 'hello from a pulled image\n', 'the pulled image runs with the registry gone');
    await h.ok(['rmi', ref]);
    const imported = await h.ok(['image', 'import', '--name', 'local/hello:v1', file]);
    assert.match(imported.stdout, /sha256:/);
    const again = await h.ok(['run', '--rm', 'local/hello:v1']);
    assert.equal(again.stdout, 'hello from a pulled image\n');
  });
});
