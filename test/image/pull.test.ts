import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, lstatSync, readlinkSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pullImage } from '../../src/image/pull.js';
import { pushImage } from '../../src/image/push.js';
import type { PullProgress } from '../../src/image/progress.js';
import { startRegistry, type RunningRegistry } from './registry-harness.js';
import { storeImage, storeIndex, tarOfTree } from './image-builder.js';
import { dumpDisk, imageRows, makeStore, storeFiles } from './helpers.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import { openSync, writeSync, closeSync, statSync, truncateSync } from 'node:fs';
import { isCellError } from '../../src/domain/errors.js';
import { BlobStore } from '../../src/store/blob-store.js';
import { MediaTypes } from '../../src/image/media-types.js';
import { registryBlobPath } from './registry-harness.js';
import { rawTar } from './image-builder.js';
import { DEFAULT_TMPFS_STAGING, TMPFS_STAGING_PREFIX } from '../../src/image/unpack/staging.js';
import { toolPath } from '../../src/image/run-tool.js';

const FAST_RETRY = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };

describe('pull from a real registry (anonymous)', () => {
  let registry: RunningRegistry;
  let src: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-src-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
  });

  test('multi-layer image with whiteouts and an opaque dir unpacks to the right tree; a second pull downloads nothing', async () => {
    const image = await storeImage(src, {
      layers: [
        { tar: tarOfTree({ 'etc/keep': 'keep\n', 'etc/gone': 'x', 'opq/lower1': 'l1', 'opq/sub/lower2': 'l2', 'bin/tool': 'v1', 'lib/a': 'a' }), compression: 'gzip' },
        { tar: tarOfTree({ 'etc/.wh.gone': '', 'opq/.wh..wh..opq': '', 'opq/upper': 'u', 'bin/tool': 'v2', 'lib/link': { symlink: 'a' } }), compression: 'gzip' },
        { tar: tarOfTree({ 'new/file': 'n' }), compression: 'none' },
      ],
      config: { Entrypoint: ['/bin/tool'], Cmd: ['--help'], Env: ['A=1'], WorkingDir: '/etc', User: '1000' },
    });
    const ref = `${registry.host}/test/layers:v1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });

    const s = makeStore();
    try {
      const events: PullProgress[] = [];
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, onProgress: (e) => events.push(e), retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(pulled.digest, image.manifestDigest);
      assert.deepEqual(pulled.config, { Entrypoint: ['/bin/tool'], Cmd: ['--help'], Env: ['A=1'], WorkingDir: '/etc', User: '1000' });
      assert.ok(events.some((e) => e.phase === 'blob' && e.status === 'done'));
      const dump = dumpDisk(pulled.diskPath);
      try {
        const root = dump.dir;
        assert.equal(readFileSync(join(root, 'etc/keep'), 'utf8'), 'keep\n');
        assert.equal(existsSync(join(root, 'etc/gone')), false);
        assert.equal(existsSync(join(root, 'etc/.wh.gone')), false);
        assert.deepEqual(readdirSync(join(root, 'opq')).sort(), ['upper']);
        assert.equal(readFileSync(join(root, 'bin/tool'), 'utf8'), 'v2');
        assert.equal(readlinkSync(join(root, 'lib/link')), 'a');
        assert.equal(readFileSync(join(root, 'new/file'), 'utf8'), 'n');
      } finally {
        dump.cleanup();
      }
      const diskStat = lstatSync(pulled.diskPath);

      const again: PullProgress[] = [];
      const second = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, onProgress: (e) => again.push(e), retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(second.digest, pulled.digest);
      assert.ok(again.filter((e) => e.phase === 'blob').every((e) => e.phase === 'blob' && e.status === 'cached'));
      assert.ok(again.some((e) => e.phase === 'disk' && e.status === 'cached'));
      assert.equal(lstatSync(pulled.diskPath).ino, diskStat.ino);
      assert.equal(storeFiles(s.root).filter((f) => f.startsWith('tmp/')).length, 0);
      assert.deepEqual(tmpfsStagingLeft(), []);

      // Staged on disk instead of tmpfs: the same tree.
      const s2 = makeStore();
      try {
        const onDisk = await pullImage({ reference: ref, storeRoot: s2.root, db: s2.db, retry: FAST_RETRY, dockerConfigPath: null, stagingTmpfs: null });
        const a = dumpDisk(pulled.diskPath);
        const b = dumpDisk(onDisk.diskPath);
        try {
          const list = (dir: string) => execFileSync('find', ['.', '-printf', '%p %y %m %s %l\\n'], { cwd: dir, encoding: 'utf8' }).split('\n').sort();
          assert.deepEqual(list(b.dir), list(a.dir));
        } finally {
          a.cleanup();
          b.cleanup();
        }
        assert.equal(storeFiles(s2.root).filter((f) => f.startsWith('tmp/')).length, 0);
      } finally {
        s2.cleanup();
      }
    } finally {
      s.cleanup();
    }
  });
});

/** tmpfs unpack staging dirs of this process still in /dev/shm. */
function tmpfsStagingLeft(): string[] {
  return readdirSync(DEFAULT_TMPFS_STAGING).filter((n) => n.startsWith(`${TMPFS_STAGING_PREFIX}${process.pid}-`));
}

describe('platforms, zstd and skopeo cross-checks', () => {
  let registry: RunningRegistry;
  let src: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-src-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
  });

  test('an index with two platforms: amd64 by default, arm64 when asked; skopeo sees the same digest', async () => {
    const amd = await storeImage(src, { layers: [{ tar: tarOfTree({ arch: 'amd64' }), compression: 'gzip' }] });
    const arm = await storeImage(src, { layers: [{ tar: tarOfTree({ arch: 'arm64' }), compression: 'zstd' }], platform: { os: 'linux', architecture: 'arm64' } });
    const index = await storeIndex(src, [
      { image: amd, platform: { os: 'linux', architecture: 'amd64' } },
      { image: arm, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    ]);
    const ref = `${registry.host}/multi/arch:latest`;
    await pushImage({ image: index, reference: ref, storeRoot: src, retry: FAST_RETRY });
    const inspected = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`], { encoding: 'utf8' }));
    assert.equal(inspected.manifests.length, 2);

    const s = makeStore();
    try {
      const a = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(a.digest, amd.manifestDigest);
      assert.equal(a.repoDigest, index);
      assert.equal(a.platform, 'linux/amd64');
      const b = await pullImage({ reference: `${registry.host}/multi/arch`, platform: 'linux/arm64', storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(b.digest, arm.manifestDigest);
      const dump = dumpDisk(b.diskPath);
      try {
        assert.equal(readFileSync(join(dump.dir, 'arch'), 'utf8'), 'arm64');
      } finally {
        dump.cleanup();
      }
      await assert.rejects(pullImage({ reference: ref, platform: 'linux/s390x', storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null }), /no image for platform linux\/s390x \(it has: linux\/amd64, linux\/arm64\/v8\)/);
    } finally {
      s.cleanup();
    }
  });

  test('an image that skopeo copied into the registry pulls, by tag and by digest', async () => {
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ 'usr/bin/x': 'skopeo' }), compression: 'gzip' }] });
    await pushImage({ image: image.manifestDigest, reference: `${registry.host}/orig/img:1`, storeRoot: src, retry: FAST_RETRY });
    execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${registry.host}/orig/img:1`, `docker://${registry.host}/copied/img:1`], { stdio: 'pipe' });
    const digest = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${registry.host}/copied/img:1`], { encoding: 'utf8' })).Digest as string;
    const s = makeStore();
    try {
      const byTag = await pullImage({ reference: `${registry.host}/copied/img:1`, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(byTag.digest, digest);
      const byDigest = await pullImage({ reference: `${registry.host}/copied/img@${digest}`, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(byDigest.diskPath, byTag.diskPath);
    } finally {
      s.cleanup();
    }
  });
});

function expectCode(c: string, message?: RegExp) {
  return (err: unknown) => {
    assert.ok(isCellError(err), `not a CellError: ${String(err)}`);
    assert.equal(err.code, c, err.message);
    if (message) assert.match(err.message, message);
    return true;
  };
}

describe('bad input leaves nothing behind', () => {
  let registry: RunningRegistry;
  let src: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-src-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
  });

  async function pullFails(reference: string, check: (err: unknown) => boolean, extra: Partial<Parameters<typeof pullImage>[0]> = {}): Promise<void> {
    const s = makeStore();
    try {
      await assert.rejects(pullImage({ reference, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null, ...extra }), check);
      assert.deepEqual(storeFiles(s.root), []);
      assert.deepEqual(tmpfsStagingLeft(), []);
      assert.equal(imageRows(s.db), 0);
    } finally {
      s.cleanup();
    }
  }

  async function pushLayers(name: string, tars: Buffer[]): Promise<string> {
    const image = await storeImage(src, { layers: tars.map((tar) => ({ tar, compression: 'gzip' as const })) });
    const ref = `${registry.host}/bad/${name}:1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });
    return ref;
  }

  test('a blob whose bytes were changed in the registry: digest mismatch', async () => {
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ ok: 'fine' }), compression: 'gzip' }, { tar: tarOfTree({ big: 'x'.repeat(100_000) }), compression: 'none' }] });
    const ref = `${registry.host}/bad/corrupt:1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });
    const data = registryBlobPath(registry.storage, image.layerDigests[1]!);
    const fd = openSync(data, 'r+');
    writeSync(fd, Buffer.from('CORRUPT'), 0, 7, 2000);
    closeSync(fd);
    await pullFails(ref, expectCode('digest_mismatch', /does not match/));
  });

  test('a truncated blob', async () => {
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ t: 'y'.repeat(50_000) }), compression: 'none' }] });
    const ref = `${registry.host}/bad/truncated:1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });
    const data = registryBlobPath(registry.storage, image.layerDigests[0]!);
    truncateSync(data, Math.floor(statSync(data).size / 2));
    await pullFails(ref, expectCode('digest_mismatch', /serves \d+ bytes, the manifest declares|truncated/));
  });

  test('a manifest that does not exist', async () => {
    await pullFails(`${registry.host}/bad/missing:nope`, expectCode('image_not_found', /not found/));
  });

  test('a bad reference', async () => {
    await pullFails('Upper/Case', expectCode('invalid_argument', /lowercase/));
    await pullFails('name@sha256:123', expectCode('invalid_argument', /not a sha256 digest/));
  });

  test('a layer declaring a gigantic size is refused before any download', async () => {
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ small: 's' }), compression: 'gzip' }] });
    const store = new BlobStore(src);
    const manifest = JSON.parse((await store.read(image.manifestDigest)).toString());
    manifest.layers[0].size = 100 * 1024 ** 4;
    const bytes = Buffer.from(JSON.stringify(manifest));
    const digest = await store.put(bytes);
    const ref = `${registry.host}/bad/huge:1`;
    // The registry checks that the blobs exist, not their sizes: push the real one first.
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });
    const res = await fetch(`http://${ref.replace('/bad/huge:1', '/v2/bad/huge/manifests/1')}`, { method: 'PUT', headers: { 'content-type': MediaTypes.OCI_MANIFEST }, body: bytes });
    assert.equal(res.status, 201, await res.text());
    void digest;
    await pullFails(ref, expectCode('size_limit', /declares 109951162777600 bytes/));
  });

  test('hostile tar entries are refused, naming the entry', async () => {
    const cases: { name: string; tar: Buffer; entry: RegExp }[] = [
      { name: 'dotdot', tar: rawTar([{ path: '../x', type: 'file', data: 'evil' }]), entry: /"\.\.\/x".*"\.\." component/ },
      { name: 'nested-dotdot', tar: rawTar([{ path: 'a/../../x', type: 'file', data: 'evil' }]), entry: /"a\/\.\.\/\.\.\/x"/ },
      { name: 'symlink-abs', tar: rawTar([{ path: 'a', type: 'symlink', linkpath: '/etc' }, { path: 'a/passwd', type: 'file', data: 'evil' }]), entry: /"a\/passwd".*symlink \/a -> \/etc/ },
      { name: 'symlink-up', tar: rawTar([{ path: 'a', type: 'symlink', linkpath: '../../' }, { path: 'a/x', type: 'file', data: 'evil' }]), entry: /"a\/x".*climbs out/ },
      { name: 'hardlink-up', tar: rawTar([{ path: 'h', type: 'hardlink', linkpath: '../../../etc/passwd' }]), entry: /"h".*"\.\." component/ },
      { name: 'hardlink-via-symlink', tar: rawTar([{ path: 'a', type: 'symlink', linkpath: '/etc' }, { path: 'h', type: 'hardlink', linkpath: 'a/passwd' }]), entry: /"h".*points outside/ },
    ];
    for (const c of cases) {
      const ref = await pushLayers(c.name, [tarOfTree({ base: 'ok' }), c.tar]);
      await pullFails(ref, expectCode('unsafe_archive', c.entry));
    }
    assert.equal(existsSync('/x'), false);
  });

  test('absolute entry names stay inside the image (a leading / is dropped, as Docker does)', async () => {
    const ref = await pushLayers('absolute', [rawTar([{ path: '/etc/cellvm-abs-test', type: 'file', data: 'inside' }])]);
    const s = makeStore();
    try {
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(existsSync('/etc/cellvm-abs-test'), false);
      const dump = dumpDisk(pulled.diskPath);
      try {
        assert.equal(readFileSync(join(dump.dir, 'etc/cellvm-abs-test'), 'utf8'), 'inside');
      } finally {
        dump.cleanup();
      }
    } finally {
      s.cleanup();
    }
  });

  test('extended attributes and capabilities reach the base disk through the staged tree (a warning without setfattr)', async () => {
    const xattrs = new Map([['user.cellvm-test', Buffer.from('hello')], ['security.capability', Buffer.from('0100000200200000000000000000000000000000', 'hex')]]);
    const ref = await pushLayers('xattrs', [rawTar([{ path: 'bin/ping', type: 'file', data: 'elf', mode: 0o755, xattrs }])]);
    const hasSetfattr = spawnSync('setfattr', ['--version'], { env: { ...process.env, PATH: toolPath() } }).status === 0;
    const s = makeStore();
    try {
      const events: PullProgress[] = [];
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null, onProgress: (e) => events.push(e) });
      // Unpacked once: a missing tool is no reason to redo the unpack on disk.
      assert.equal(events.filter((e) => e.phase === 'unpack').length, 1);
      if (hasSetfattr) {
        assert.deepEqual(pulled.warnings, []);
        const ea = (name: string) => execFileSync('debugfs', ['-R', `ea_get -x /bin/ping ${name}`, pulled.diskPath], { encoding: 'utf8', stdio: 'pipe' }).replace(/\s+/g, '');
        assert.match(ea('user.cellvm-test'), /68656c6c6f/);
        assert.match(ea('security.capability'), /0100000200200000/);
      } else {
        assert.match(pulled.warnings.join('\n'), /extended attributes of 1 files not set: .*setfattr/);
      }
      assert.deepEqual(tmpfsStagingLeft(), []);
    } finally {
      s.cleanup();
    }
  });

  test('a schema 1 manifest is refused with a clear error', async () => {
    const server = createServer((req, res) => {
      if (req.url === '/v2/') {
        res.writeHead(200).end('{}');
      } else if (req.url?.startsWith('/v2/old/img/manifests/')) {
        res.writeHead(200, { 'content-type': MediaTypes.DOCKER_SCHEMA1_SIGNED });
        res.end(JSON.stringify({ schemaVersion: 1, name: 'old/img', tag: 'v1', fsLayers: [], history: [], signatures: [] }));
      } else res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as { port: number }).port;
      await pullFails(`127.0.0.1:${port}/old/img:v1`, expectCode('unsupported_manifest', /schema 1 is not supported/));
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

describe('a download that breaks part-way while the unpack follows it', () => {
  let registry: RunningRegistry;
  let src: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-src-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
  });

  /**
   * A proxy to the registry that stops the first GET of `blob` after half its bytes for 300 ms,
   * then cuts it (`resume`: the retry's Range header is passed on; `restart`: it is dropped, so
   * the retry starts again from byte 0) or sends the rest (`pause`).
   */
  async function flakyProxy(blob: string, mode: 'resume' | 'restart' | 'pause'): Promise<{ host: string; close: () => Promise<void> }> {
    let cut = false;
    const server = createServer((req, res) => {
      const headers = { ...req.headers };
      if (mode === 'restart') delete headers.range;
      const upstream = httpRequest({ host: '127.0.0.1', port: registry.port, method: req.method, path: req.url, headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        if (cut || req.method !== 'GET' || !req.url?.endsWith(`/blobs/${blob}`)) return void up.pipe(res);
        cut = true;
        const half = Math.floor(Number(up.headers['content-length']) / 2);
        const parts: Buffer[] = [];
        up.on('data', (chunk: Buffer) => parts.push(chunk));
        up.on('end', () => {
          const body = Buffer.concat(parts);
          res.write(body.subarray(0, half));
          setTimeout(() => (mode === 'pause' ? res.end(body.subarray(half)) : res.destroy()), 300);
        });
      });
      req.pipe(upstream);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return {
      host: `127.0.0.1:${(server.address() as { port: number }).port}`,
      close: async () => {
        server.closeAllConnections();
        await new Promise<void>((r) => server.close(() => r()));
      },
    };
  }

  for (const honourRange of [true, false]) {
    test(`the tree is right when the download ${honourRange ? 'resumes with Range' : 'starts over from byte 0'}`, async () => {
      const files: Record<string, string> = {};
      for (let i = 0; i < 300; i++) files[`d${i % 7}/f${i}`] = `${i} `.repeat(2000 + i);
      const image = await storeImage(src, { layers: [{ tar: tarOfTree(files), compression: 'gzip' }, { tar: tarOfTree({ 'd0/f0': 'replaced' }), compression: 'gzip' }] });
      const name = `flaky/range-${honourRange}`;
      await pushImage({ image: image.manifestDigest, reference: `${registry.host}/${name}:1`, storeRoot: src, retry: FAST_RETRY });
      const proxy = await flakyProxy(image.layerDigests[0]!, honourRange ? 'resume' : 'restart');
      const s = makeStore();
      try {
        const events: PullProgress[] = [];
        const pulled = await pullImage({ reference: `${proxy.host}/${name}:1`, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null, onProgress: (e) => events.push(e) });
        const dump = dumpDisk(pulled.diskPath);
        try {
          assert.equal(readFileSync(join(dump.dir, 'd0/f0'), 'utf8'), 'replaced');
          assert.equal(readFileSync(join(dump.dir, 'd5/f299'), 'utf8'), '299 '.repeat(2299));
          assert.equal(readdirSync(join(dump.dir, 'd3')).length, 43);
        } finally {
          dump.cleanup();
        }
        // Starting over from byte 0 means the bytes already unpacked may differ: the unpack is redone.
        const firstLayerStarts = events.filter((e) => e.phase === 'unpack' && e.layer === 1).length;
        assert.equal(firstLayerStarts, honourRange ? 1 : 2);
        assert.equal(storeFiles(s.root).filter((f) => f.startsWith('tmp/')).length, 0);
        assert.deepEqual(tmpfsStagingLeft(), []);
      } finally {
        s.cleanup();
        await proxy.close();
      }
    });
  }

  test('a first layer corrupted in the registry fails as a digest mismatch, not as the tar error the unpack that read it saw', async () => {
    const files: Record<string, string> = {};
    for (let i = 0; i < 200; i++) files[`f${i}`] = randomBytes(3000).toString('hex');
    const image = await storeImage(src, { layers: [{ tar: tarOfTree(files), compression: 'gzip' }] });
    const ref = `flaky/corrupt-first:1`;
    await pushImage({ image: image.manifestDigest, reference: `${registry.host}/${ref}`, storeRoot: src, retry: FAST_RETRY });
    const data = registryBlobPath(registry.storage, image.layerDigests[0]!);
    const fd = openSync(data, 'r+');
    writeSync(fd, Buffer.alloc(64, 0xaa), 0, 64, 100);
    closeSync(fd);
    // The pause keeps the download running while the unpack already fails on the corrupt gzip.
    const proxy = await flakyProxy(image.layerDigests[0]!, 'pause');
    const s = makeStore();
    try {
      await assert.rejects(pullImage({ reference: `${proxy.host}/${ref}`, storeRoot: s.root, db: s.db, retry: FAST_RETRY, dockerConfigPath: null }), expectCode('digest_mismatch', /does not match/));
      assert.deepEqual(storeFiles(s.root), []);
      assert.deepEqual(tmpfsStagingLeft(), []);
      assert.equal(imageRows(s.db), 0);
    } finally {
      s.cleanup();
      await proxy.close();
    }
  });
});
