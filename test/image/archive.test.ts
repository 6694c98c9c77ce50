import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importArchive } from '../../src/image/archive/import.js';
import { exportImage } from '../../src/image/archive/export.js';
import { collectGarbage, evictImages, removeImageReference } from '../../src/image/gc.js';
import { sha256Digest } from '../../src/image/digest.js';
import { ImagePins } from '../../src/store/image-pins.js';
import { isCellError } from '../../src/domain/errors.js';
import { dockerSave, tarOfTree } from './image-builder.js';
import { claimingTar, manyEntriesTar, paxFloodTar } from '../helpers/hostile-archives.js';
import { dumpDisk, imageRows, makeStore, storeFiles } from './helpers.js';

test('docker-save import, OCI-layout export and re-import, skopeo reads the export', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  const s2 = makeStore();
  try {
    const layer0 = tarOfTree({ 'bin/app': '#!/bin/sh\n', 'etc/a': 'a' });
    const file = dockerSave(dir, 'example.com/team/app:2', [layer0, tarOfTree({ 'etc/.wh.a': '', 'etc/b': 'b' }), layer0]);
    const imported = await importArchive({ file, storeRoot: s.root, db: s.db });
    assert.equal(imported.reference, 'example.com/team/app:2');
    assert.deepEqual(imported.config, { Cmd: ['/bin/app'], Env: ['X=y'] });
    const dump = dumpDisk(imported.diskPath);
    try {
      assert.equal(readFileSync(join(dump.dir, 'bin/app'), 'utf8'), '#!/bin/sh\n');
      assert.equal(readFileSync(join(dump.dir, 'etc/a'), 'utf8'), 'a');
      assert.equal(readFileSync(join(dump.dir, 'etc/b'), 'utf8'), 'b');
    } finally {
      dump.cleanup();
    }
    assert.deepEqual(storeFiles(s.root).filter((f) => f.startsWith('tmp/')), []);

    const exported = join(dir, 'export.tar');
    const out = await exportImage({ reference: 'example.com/team/app:2', file: exported, storeRoot: s.root, db: s.db });
    assert.equal(out.digest, imported.digest);
    const inspected = JSON.parse(execFileSync('skopeo', ['inspect', `oci-archive:${exported}`], { encoding: 'utf8' }));
    assert.equal(inspected.Digest, imported.digest);

    const again = await importArchive({ file: exported, storeRoot: s2.root, db: s2.db });
    assert.equal(again.digest, imported.digest);
    assert.equal(again.reference, 'example.com/team/app:2');
  } finally {
    s.cleanup();
    s2.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a corrupt blob in an OCI archive is refused and leaves nothing', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  const s2 = makeStore();
  try {
    const file = dockerSave(dir, 'example.com/x:1', [tarOfTree({ f: 'content' })]);
    await importArchive({ file, storeRoot: s.root, db: s.db });
    const exported = join(dir, 'export.tar');
    await exportImage({ reference: 'example.com/x:1', file: exported, storeRoot: s.root, db: s.db });
    // Flip bytes inside the archive's layer blob (the tar data of "content").
    const bytes = readFileSync(exported);
    const at = bytes.indexOf(Buffer.from('content'));
    assert.ok(at > 0);
    bytes.write('CONTENT', at);
    writeFileSync(exported, bytes);
    await assert.rejects(importArchive({ file: exported, storeRoot: s2.root, db: s2.db }), (err: unknown) => isCellError(err) && err.code === 'digest_mismatch');
    assert.deepEqual(storeFiles(s2.root), []);
    assert.equal(imageRows(s2.db), 0);
  } finally {
    s.cleanup();
    s2.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('garbage collection spares pinned content; LRU eviction skips pinned images', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  try {
    const a = await importArchive({ file: dockerSave(join(dir, 'a'), 'example.com/a:1', [tarOfTree({ a: 'a' })]), storeRoot: s.root, db: s.db });
    const b = await importArchive({ file: dockerSave(join(dir, 'b'), 'example.com/b:1', [tarOfTree({ b: 'b' })]), storeRoot: s.root, db: s.db });
    const pins = new ImagePins(s.db);
    s.db.prepare('UPDATE images SET last_used = ? WHERE reference = ?').run('2000-01-01T00:00:00Z', a.reference);

    // A VM uses image a: removing its reference and collecting keeps its disk and blobs.
    pins.pin('vm', 'vm1', [a.digest]);
    assert.equal(removeImageReference(s.db, a.reference), true);
    let gc = await collectGarbage({ storeRoot: s.root, db: s.db, graceMs: 0 });
    assert.deepEqual(gc.blobsRemoved, []);
    assert.ok(existsSync(a.diskPath));
    pins.unpin('vm', 'vm1');
    gc = await collectGarbage({ storeRoot: s.root, db: s.db, graceMs: 0 });
    assert.equal(gc.blobsRemoved.length, 3);
    assert.equal(existsSync(a.diskPath), false);
    assert.ok(existsSync(b.diskPath));

    // Eviction: b is pinned, so even a zero cap keeps it; unpinned, it goes.
    pins.pin('snapshot', 'snap1', [b.digest]);
    let ev = await evictImages({ storeRoot: s.root, db: s.db, maxBytes: 0, graceMs: 0 });
    assert.deepEqual(ev.evicted, []);
    pins.unpin('snapshot', 'snap1');
    ev = await evictImages({ storeRoot: s.root, db: s.db, maxBytes: 0, graceMs: 0 });
    assert.deepEqual(ev.evicted, [b.reference]);
    assert.deepEqual(storeFiles(s.root), []);
  } finally {
    s.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('garbage collection removes tmpfs unpack staging dirs of processes that are gone, not of live ones', async () => {
  const shm = mkdtempSync('/dev/shm/cellt-gc-');
  const s = makeStore();
  try {
    const gone = spawnSync('true').pid!;
    mkdirSync(join(shm, `cellvm-unpack-${gone}-abc/rootfs/etc`), { recursive: true });
    mkdirSync(join(shm, `cellvm-unpack-${process.pid}-def/rootfs`), { recursive: true });
    mkdirSync(join(shm, 'unrelated-dir'));
    await collectGarbage({ storeRoot: s.root, db: s.db, graceMs: 0, stagingTmpfs: shm });
    assert.deepEqual(readdirSync(shm).sort(), [`cellvm-unpack-${process.pid}-def`, 'unrelated-dir']);
  } finally {
    s.cleanup();
    rmSync(shm, { recursive: true, force: true });
  }
});

test('an image archive of three million empty files is refused at the entry cap, without unpacking them', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  try {
    const file = join(dir, 'millions.tar.gz');
    await manyEntriesTar(file, 3_000_000);
    const started = performance.now();
    await assert.rejects(importArchive({ file, storeRoot: s.root, db: s.db }), (err: unknown) => {
      assert.ok(isCellError(err) && err.code === 'size_limit', String(err));
      assert.match(err.message, /^archive .*millions\.tar\.gz has more than 65536 entries: refused before unpacking it$/);
      return true;
    });
    console.log(`# refused 3,000,000 entries in ${Math.round(performance.now() - started)} ms`);
    assert.deepEqual(storeFiles(s.root), []);
    assert.equal(imageRows(s.db), 0);
  } finally {
    s.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an image archive member claiming 1 TiB is refused by its header; importMaxBytes caps honest ones too', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  try {
    const file = join(dir, 'claims.tar');
    await claimingTar(file, 'blobs/sha256/' + 'a'.repeat(64), 2 ** 40, [{ name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') }]);
    await assert.rejects(importArchive({ file, storeRoot: s.root, db: s.db }), (err: unknown) => {
      assert.ok(isCellError(err) && err.code === 'resources_exhausted', String(err));
      assert.match(err.message, /^the file system of .*\/tmp has too little room: archive .*claims\.tar needs at least 1048576\.0 MiB \(its members up to blobs\/sha256\/a+\), [0-9.]+ MiB are free$/);
      return true;
    });
    assert.deepEqual(storeFiles(s.root), []);
    const honest = dockerSave(dir, 'example.com/capped:1', [tarOfTree({ big: 'x'.repeat(100_000) })]);
    await assert.rejects(importArchive({ file: honest, storeRoot: s.root, db: s.db, maxArchiveBytes: 50_000 }), (err: unknown) => {
      assert.ok(isCellError(err) && err.code === 'size_limit', String(err));
      assert.match(err.message, /its members add up to more than the 50000 bytes imports may take \(importMaxBytes\)/);
      return true;
    });
    assert.deepEqual(storeFiles(s.root), []);
    assert.equal((await importArchive({ file: honest, storeRoot: s.root, db: s.db, maxArchiveBytes: 10_000_000 })).reference, 'example.com/capped:1');
  } finally {
    s.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a run of pax records with no entry between them is refused (they would dodge the entry cap)', async () => {
  const dir = mkdtempSync('/tmp/cellt-archive-');
  const s = makeStore();
  try {
    const file = join(dir, 'pax.tar');
    await paxFloodTar(file, 40);
    await assert.rejects(importArchive({ file, storeRoot: s.root, db: s.db }), (err: unknown) => {
      assert.ok(isCellError(err) && err.code === 'unsafe_archive', String(err));
      assert.match(err.message, /more than 32 metadata records before one entry/);
      return true;
    });
    const few = join(dir, 'few.tar');
    await paxFloodTar(few, 3);
    await assert.rejects(importArchive({ file: few, storeRoot: s.root, db: s.db }), (err: unknown) => isCellError(err) && /neither an OCI layout/.test(err.message), 'a few are read as usual');
    assert.deepEqual(storeFiles(s.root), []);
  } finally {
    s.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
});
