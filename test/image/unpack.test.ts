import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { unpackLayers, rootfsOf } from '../../src/image/unpack/unpack-layers.js';
import { parseReference, formatReference } from '../../src/image/reference.js';
import { parseManifest } from '../../src/image/manifest.js';
import { isCellError } from '../../src/domain/errors.js';
import { compress, rawTar, tarOfTree } from './image-builder.js';

const isRoot = process.getuid?.() === 0;

function withWork<T>(fn: (work: string) => Promise<T>): Promise<T> {
  const work = mkdtempSync('/tmp/cellt-unpack-');
  return fn(work).finally(() => rmSync(work, { recursive: true, force: true }));
}

function layerFile(work: string, name: string, tar: Buffer): string {
  const p = join(work, name);
  writeFileSync(p, tar);
  return p;
}

test('GNU tar features survive: long names, hard links, symlinks, modes, owners, times, devices, fifos', async () => {
  await withWork(async (work) => {
    const src = join(work, 'src');
    const long = `${'d'.repeat(120)}/${'f'.repeat(200)}`;
    mkdirSync(join(src, 'd'.repeat(120)), { recursive: true });
    writeFileSync(join(src, long), 'long');
    writeFileSync(join(src, 'suid'), 'x', { mode: 0o4755 });
    execFileSync('chmod', ['4755', join(src, 'suid')]);
    writeFileSync(join(src, 'orig'), 'linked');
    execFileSync('ln', [join(src, 'orig'), join(src, 'hard')]);
    execFileSync('ln', ['-s', '/nowhere/at/all', join(src, 'dangling')]);
    execFileSync('touch', ['-h', '-d', '@1600000000', join(src, 'orig')]);
    if (isRoot) {
      execFileSync('mknod', [join(src, 'null'), 'c', '1', '3']);
      execFileSync('mkfifo', [join(src, 'fifo')]);
      execFileSync('chown', ['1234:5678', join(src, 'orig')]);
    }
    const tar = execFileSync('tar', ['--format=posix', '--numeric-owner', '-C', src, '-cf', '-', '.'], { maxBuffer: 1 << 26 });
    const out = await unpackLayers({ layers: [{ path: layerFile(work, 'l.tar.zst', compress(tar, 'zstd')), what: 'layer' }], workDir: join(work, 'tmp') });
    const root = rootfsOf(out);
    assert.equal(readFileSync(join(root, long), 'utf8'), 'long');
    assert.equal(lstatSync(join(root, 'suid')).mode & 0o7777, 0o4755);
    assert.equal(lstatSync(join(root, 'hard')).ino, lstatSync(join(root, 'orig')).ino);
    assert.equal(readlinkSync(join(root, 'dangling')), '/nowhere/at/all');
    assert.equal(Math.floor(lstatSync(join(root, 'orig')).mtimeMs / 1000), 1600000000);
    if (isRoot) {
      assert.ok(lstatSync(join(root, 'null')).isCharacterDevice());
      assert.equal(lstatSync(join(root, 'null')).rdev, lstatSync('/dev/null').rdev);
      assert.ok(lstatSync(join(root, 'fifo')).isFIFO());
      assert.equal(lstatSync(join(root, 'orig')).uid, 1234);
      assert.equal(lstatSync(join(root, 'orig')).gid, 5678);
    }
    rmSync(out.dir, { recursive: true, force: true });
  });
});

test('whiteouts: a deleted dir, an opaque dir with nested lower content, a file replacing a dir, relative symlinks followed inside', async () => {
  await withWork(async (work) => {
    const l1 = tarOfTree({ 'gone/a/b': '1', 'opq/sub/old': 'old', 'opq/keep-not': 'x', 'swap/inner': 'i', 'real/x': 'x', 'usr/lib/base': 'b', lib: { symlink: 'usr/lib' } });
    const l2 = rawTar([
      { path: 'opq/sub/new', type: 'file', data: 'new' },
      { path: 'opq/.wh..wh..opq', type: 'file' },
      { path: '.wh.gone', type: 'file' },
      { path: 'swap', type: 'file', data: 'now a file' },
      { path: 'lib/added', type: 'file', data: 'via symlink' },
    ]);
    const out = await unpackLayers({
      layers: [
        { path: layerFile(work, 'l1', compress(l1, 'gzip')), what: 'l1' },
        { path: Promise.resolve(layerFile(work, 'l2', l2)), what: 'l2' },
      ],
      workDir: join(work, 'tmp'),
    });
    const root = rootfsOf(out);
    assert.equal(existsSync(join(root, 'gone')), false);
    assert.deepEqual(readdirSync(join(root, 'opq')), ['sub']);
    assert.deepEqual(readdirSync(join(root, 'opq/sub')), ['new']);
    assert.equal(readFileSync(join(root, 'swap'), 'utf8'), 'now a file');
    assert.equal(readFileSync(join(root, 'usr/lib/added'), 'utf8'), 'via symlink');
    assert.deepEqual(out.warnings, []);
  });
});

test('caps on entries and unpacked bytes, and a failed unpack removes its staging dir', async () => {
  await withWork(async (work) => {
    const many = rawTar(Array.from({ length: 50 }, (_, i) => ({ path: `f${i}`, type: 'file' as const, data: 'x' })));
    const tmp = join(work, 'tmp');
    await assert.rejects(
      unpackLayers({ layers: [{ path: layerFile(work, 'many', many), what: 'many' }], workDir: tmp, limits: { maxEntries: 10 } }),
      (err: unknown) => isCellError(err) && err.code === 'size_limit' && /more than 10 files/.test(err.message),
    );
    const bomb = compress(rawTar([{ path: 'zeros', type: 'file', data: '\0'.repeat(4 * 1024 * 1024) }]), 'gzip');
    await assert.rejects(
      unpackLayers({ layers: [{ path: layerFile(work, 'bomb', bomb), what: 'bomb' }], workDir: tmp, limits: { maxBytes: 1024 * 1024 } }),
      (err: unknown) => isCellError(err) && err.code === 'size_limit',
    );
    await assert.rejects(
      unpackLayers({ layers: [{ path: layerFile(work, 'trunc', many.subarray(0, 700)), what: 'trunc' }], workDir: tmp }),
      (err: unknown) => isCellError(err) && err.code === 'unsafe_archive' && /truncated/.test(err.message),
    );
    await assert.rejects(
      unpackLayers({ layers: [{ path: layerFile(work, 'junk', Buffer.alloc(1024, 7)), what: 'junk' }], workDir: tmp }),
      (err: unknown) => isCellError(err) && /not a tar archive/.test(err.message),
    );
    await assert.rejects(
      unpackLayers({ layers: [{ path: layerFile(work, 'ok', tarOfTree({ a: 'a' })), what: 'ok', diffId: 'sha256:' + '0'.repeat(64) }], workDir: tmp }),
      (err: unknown) => isCellError(err) && err.code === 'digest_mismatch',
    );
    assert.deepEqual(readdirSync(tmp), []);
  });
});

test('image references parse like Docker', () => {
  const cases: [string, string][] = [
    ['busybox', 'docker.io/library/busybox:latest'],
    ['user/app:1.2', 'docker.io/user/app:1.2'],
    ['localhost/app', 'localhost/app:latest'],
    ['host:5000/ns/name:tag', 'host:5000/ns/name:tag'],
    [`name@sha256:${'a'.repeat(64)}`, `docker.io/library/name@sha256:${'a'.repeat(64)}`],
    ['ghcr.io/a/b/c:v', 'ghcr.io/a/b/c:v'],
  ];
  for (const [input, full] of cases) assert.equal(formatReference(parseReference(input)), full);
  for (const bad of ['', 'UPPER', 'a:b:c', 'name@sha256:abc', 'a//b', 'name:-tag', 'host:5000/', 'a b']) {
    assert.throws(() => parseReference(bad), (err: unknown) => isCellError(err) && err.code === 'invalid_argument', bad);
  }
});

test('manifests: schema 1, artifacts and unknown types are refused clearly', () => {
  assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":1,"fsLayers":[]}'), 'm'), /schema 1 is not supported/);
  assert.throws(() => parseManifest(Buffer.from('{"schemaVersion":2,"mediaType":"application/x-foo"}'), 'm'), /unsupported media type application\/x-foo/);
  const artifact = { schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', digest: `sha256:${'b'.repeat(64)}`, size: 1 }, layers: [] };
  assert.throws(() => parseManifest(Buffer.from(JSON.stringify(artifact)), 'm'), /not a container image/);
});

/** tmpfs staging dirs this process left in `dir` (they would hold RAM until reboot). */
function ourStaging(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.startsWith(`cellvm-unpack-${process.pid}-`));
}

test('staging on tmpfs: used when the tree fits, redone on disk when it outgrows its budget, never left behind', async () => {
  await withWork(async (work) => {
    const shm = mkdtempSync('/dev/shm/cellt-staging-');
    try {
      const tmp = join(work, 'tmp');
      const l1 = layerFile(work, 'l1', compress(tarOfTree({ 'etc/small': 's', 'lib/big': 'b'.repeat(200_000), 'bin/x': { symlink: '../lib/big' } }), 'gzip'));
      const l2 = layerFile(work, 'l2', rawTar([{ path: 'lib/.wh.big', type: 'file' }, { path: 'etc/new', type: 'file', data: 'n' }]));
      const layers = [{ path: l1, what: 'l1' }, { path: Promise.resolve(l2), what: 'l2' }];
      const check = (root: string): void => {
        assert.equal(readFileSync(join(root, 'etc/small'), 'utf8'), 's');
        assert.equal(readFileSync(join(root, 'etc/new'), 'utf8'), 'n');
        assert.equal(existsSync(join(root, 'lib/big')), false);
        assert.equal(readlinkSync(join(root, 'bin/x')), '../lib/big');
      };

      const fits = await unpackLayers({ layers, workDir: tmp, tmpfs: { dir: shm } });
      assert.ok(fits.dir.startsWith(`${shm}/cellvm-unpack-${process.pid}-`), fits.dir);
      check(rootfsOf(fits));
      rmSync(fits.dir, { recursive: true, force: true });

      // 200 kB of file data cannot fit 64 KiB: thrown away and redone in the store's tmp/.
      const spilled = await unpackLayers({ layers, workDir: tmp, tmpfs: { dir: shm, maxBytes: 64 * 1024 } });
      assert.ok(spilled.dir.startsWith(`${tmp}/unpack-`), spilled.dir);
      check(rootfsOf(spilled));
      assert.deepEqual(spilled.warnings, []);
      assert.deepEqual(ourStaging(shm), []);
      rmSync(spilled.dir, { recursive: true, force: true });

      // A failure on tmpfs (not a lack of room) is not retried, and removes its dir.
      const hostile = layerFile(work, 'hostile', rawTar([{ path: 'a', type: 'symlink', linkpath: '/etc' }, { path: 'a/passwd', type: 'file', data: 'evil' }]));
      await assert.rejects(
        unpackLayers({ layers: [{ path: hostile, what: 'hostile' }], workDir: tmp, tmpfs: { dir: shm } }),
        (err: unknown) => isCellError(err) && err.code === 'unsafe_archive',
      );
      await assert.rejects(
        unpackLayers({ layers: [{ path: l1, what: 'l1', diffId: 'sha256:' + '0'.repeat(64) }], workDir: tmp, tmpfs: { dir: shm } }),
        (err: unknown) => isCellError(err) && err.code === 'digest_mismatch',
      );
      assert.deepEqual(ourStaging(shm), []);
      assert.deepEqual(readdirSync(tmp), []);

      // Layers bigger (compressed) than the budget: straight to disk, nothing unpacked twice.
      let starts = 0;
      const skipped = await unpackLayers({ layers, workDir: tmp, tmpfs: { dir: shm, maxBytes: 64 * 1024, layerBytes: 1024 * 1024 }, onLayer: () => starts++ });
      assert.ok(skipped.dir.startsWith(`${tmp}/unpack-`), skipped.dir);
      assert.equal(starts, 2);
      rmSync(skipped.dir, { recursive: true, force: true });

      // Not a tmpfs: staged on disk.
      const onDisk = await unpackLayers({ layers, workDir: tmp, tmpfs: { dir: work } });
      assert.ok(onDisk.dir.startsWith(`${tmp}/unpack-`), onDisk.dir);
      rmSync(onDisk.dir, { recursive: true, force: true });
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });
});
