/**
 * A pull or import that cannot fit says so, with the file system, what it needed and what is
 * free, on a real 4 MiB tmpfs mounted as the store (CELL_HOME): refused before any layer is
 * downloaded when the blobs alone do not fit, and stopped with the same kind of error when the
 * unpacked tree fills it. Nothing is left behind either way.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pullImage } from '../../src/image/pull.js';
import { pushImage } from '../../src/image/push.js';
import { openDatabase, type Db } from '../../src/store/database.js';
import { startRegistry, type RunningRegistry } from './registry-harness.js';
import { storeImage, tarOfTree } from './image-builder.js';
import { imageRows, storeFiles } from './helpers.js';

const RETRY = { attempts: 2, baseDelayMs: 10, maxDelayMs: 50 };
const MIB = 1024 * 1024;
const asRoot = process.getuid?.() === 0;

describe('free space on the store\'s file system (a 4 MiB tmpfs)', { skip: !asRoot && 'needs root to mount a small tmpfs' }, () => {
  let registry: RunningRegistry;
  let work: string;
  let mount: string;
  let db: Db;
  before(async () => {
    registry = await startRegistry();
    work = mkdtempSync('/tmp/cellt-space-');
    mount = join(work, 'home');
    mkdirSync(mount);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'cellt-space', mount]);
    // The database lives off the small file system: only the image store is measured.
    db = openDatabase(join(work, 'cell.db'));
  });
  after(async () => {
    db?.close();
    if (mount) execFileSync('umount', [mount], { stdio: 'ignore' });
    await registry?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('an image whose layers do not fit is refused before a byte of them is downloaded', async () => {
    const src = mkdtempSync('/tmp/cellt-space-src-');
    try {
      // 6 MiB of random bytes: gzip cannot shrink them below the 4 MiB the store has.
      const big = await storeImage(src, { layers: [{ tar: tarOfTree({ 'blob.bin': randomBytes(6 * MIB).toString('latin1') }), compression: 'gzip' }] });
      const ref = `${registry.host}/space/big:v1`;
      await pushImage({ image: big.manifestDigest, reference: ref, storeRoot: src, retry: RETRY, dockerConfigPath: null });
      const downloads: string[] = [];
      await assert.rejects(
        pullImage({ reference: ref, storeRoot: mount, db, retry: RETRY, dockerConfigPath: null, onProgress: (e) => e.phase === 'blob' && e.status === 'downloading' && downloads.push(e.digest) }),
        (err: unknown) => {
          const e = err as { code?: string; message: string; details?: { neededBytes: number; freeBytes: number } };
          assert.equal(e.code, 'resources_exhausted', e.message);
          assert.match(e.message, new RegExp(`^the file system of ${mount} has too little room: pulling ${ref.replace(/[.]/g, '\\.')} \\(the layers and config not stored yet\\) needs [0-9.]+ MiB, [0-9.]+ MiB are free$`));
          assert.ok(e.details!.neededBytes > 6 * MIB && e.details!.freeBytes < 4 * MIB + 1);
          return true;
        },
      );
      assert.deepEqual(downloads, [], 'no blob download started');
      assert.deepEqual(storeFiles(mount), []);
      assert.equal(imageRows(db), 0);
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });

  test('an image whose tree fills the file system while unpacking stops with which file system and how far it got', async () => {
    const src = mkdtempSync('/tmp/cellt-space-src-');
    try {
      // 8 MiB of zeros: a few KiB of layer, twice the store's room once unpacked.
      const bomb = await storeImage(src, { layers: [{ tar: tarOfTree({ 'zeros.bin': '\0'.repeat(8 * MIB) }), compression: 'gzip' }] });
      const ref = `${registry.host}/space/zeros:v1`;
      await pushImage({ image: bomb.manifestDigest, reference: ref, storeRoot: src, retry: RETRY, dockerConfigPath: null });
      await assert.rejects(pullImage({ reference: ref, storeRoot: mount, db, retry: RETRY, dockerConfigPath: null, stagingTmpfs: null }), (err: unknown) => {
        const e = err as { code?: string; message: string };
        assert.equal(e.code, 'resources_exhausted', e.message);
        assert.match(e.message, new RegExp(`^the file system of ${mount}/tmp is full: unpacking layer 1/1 \\(sha256:[0-9a-f]{12}\\) of .* stopped after [0-9.]+ MiB of uncompressed layers, [0-9.]+ MiB are free$`));
        return true;
      });
      assert.deepEqual(storeFiles(mount), [], 'the partial tree and the blobs are gone');
      assert.deepEqual(readdirSync(mount).filter((n) => n !== 'blobs' && n !== 'tmp'), []);
      assert.equal(imageRows(db), 0);
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });
});
