import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { canClone, cloneWithChanges, CLONE_PAGE_BYTES, preferPageSizedCopies } from '../../src/host/clone-file.js';
import { CoveredRanges, fileExtents, parseFilefrag } from '../../src/host/extents.js';
import { mountReflinkFs, type ReflinkFs } from '../helpers/reflink-fs.js';

const PAGE = CLONE_PAGE_BYTES;

/** A RAM-like file: `pages` pages, every third one random, the rest zero (holes where written so). */
function ramLike(pages: number): Buffer {
  const buf = Buffer.alloc(pages * PAGE);
  for (let p = 0; p < pages; p += 3) randomBytes(PAGE).copy(buf, p * PAGE);
  return buf;
}

/** The same with `which` pages replaced by new random bytes. */
function changed(base: Buffer, which: number[]): Buffer {
  const buf = Buffer.from(base);
  for (const p of which) randomBytes(PAGE).copy(buf, p * PAGE);
  return buf;
}

/** Bytes of a file's own (unshared) extents, and all its extents. */
function extentBytes(extents: { shared: boolean; length: number }[]) {
  return { own: extents.filter((e) => !e.shared).reduce((n, e) => n + e.length, 0), all: extents.reduce((n, e) => n + e.length, 0) };
}

describe('cloneWithChanges on XFS with reflinks (a real loop-mounted file system)', () => {
  let fs: ReflinkFs;
  let dir: string;
  before(async () => {
    fs = mountReflinkFs(1024);
    dir = join(fs.dir, 'snapshots');
    mkdirSync(dir);
    assert.equal(await canClone(dir), true);
    // Inherited by what is made in the folder afterwards (see preferPageSizedCopies).
    assert.equal(await preferPageSizedCopies(dir), null);
  });
  after(() => fs?.dispose());

  test('the clone reads as the source, and only the changed pages are its own blocks', async () => {
    const base = ramLike(2048);
    const source = changed(base, [0, 1, 2, 700, 1500, 2047]);
    writeFileSync(join(dir, 'parent'), base);
    // The source lies elsewhere, as a running guest's RAM lies on /dev/shm.
    const src = join(mkdtempSync('/tmp/cellt-clone-'), 'ram');
    writeFileSync(src, source);
    try {
      const result = await cloneWithChanges(join(dir, 'parent'), src, join(dir, 'child'));
      assert.deepEqual(result, { changedBytes: 6 * PAGE, totalBytes: source.length });
      assert.ok(readFileSync(join(dir, 'child')).equals(source));
      assert.equal(statSync(join(dir, 'child')).mode & 0o777, 0o600);

      const extents = await fileExtents([join(dir, 'parent'), join(dir, 'child')]);
      const child = extentBytes(extents.get(join(dir, 'child'))!);
      assert.equal(child.own, 6 * PAGE, 'the child owns exactly its six changed pages');
      // Counted once across both files: the parent's blocks plus the child's six pages.
      const parentBlocks = statSync(join(dir, 'parent')).blocks * 512;
      const covered = new CoveredRanges();
      let used = 0;
      for (const file of extents.values()) {
        used += extentBytes(file).own;
        used += covered.add(file.filter((e) => e.shared));
      }
      assert.equal(used, parentBlocks + 6 * PAGE);

      // Nothing refers to the parent afterwards: removing it leaves the child whole.
      rmSync(join(dir, 'parent'));
      assert.ok(readFileSync(join(dir, 'child')).equals(source));
    } finally {
      rmSync(join(src, '..'), { recursive: true, force: true });
      rmSync(join(dir, 'child'), { force: true });
    }
  });

  test('a source of another size: the clone takes its size (a tail that is not a whole page too)', async () => {
    const base = ramLike(300);
    writeFileSync(join(dir, 'p2'), base);
    const longer = Buffer.concat([changed(base, [5]), randomBytes(3 * PAGE + 100)]);
    const shorter = base.subarray(0, 100 * PAGE + 10);
    writeFileSync(join(dir, 'longer-src'), longer);
    writeFileSync(join(dir, 'shorter-src'), shorter);
    const l = await cloneWithChanges(join(dir, 'p2'), join(dir, 'longer-src'), join(dir, 'longer'));
    assert.equal(l?.totalBytes, longer.length);
    assert.ok(readFileSync(join(dir, 'longer')).equals(longer));
    const s = await cloneWithChanges(join(dir, 'p2'), join(dir, 'shorter-src'), join(dir, 'shorter'));
    assert.deepEqual(s, { changedBytes: 0, totalBytes: shorter.length });
    assert.ok(readFileSync(join(dir, 'shorter')).equals(shorter));
  });

  test('a symlink planted at the target is not followed: the clone is refused and the link left alone', async () => {
    writeFileSync(join(dir, 'p3'), ramLike(10));
    writeFileSync(join(dir, 'victim'), 'keep');
    symlinkSync(join(dir, 'victim'), join(dir, 'planted'));
    await assert.rejects(cloneWithChanges(join(dir, 'p3'), join(dir, 'p3'), join(dir, 'planted')), /EEXIST/);
    assert.equal(readFileSync(join(dir, 'victim'), 'utf8'), 'keep');
    assert.equal(readlinkSync(join(dir, 'planted')), join(dir, 'victim'));
  });
});

describe('cloneWithChanges where the file system cannot clone', () => {
  test('ext4 (this host) and across file systems: null, and no target left behind', async () => {
    const root = mkdtempSync('/tmp/cellt-clone-');
    try {
      writeFileSync(join(root, 'base'), ramLike(8));
      assert.equal(await canClone(root), false);
      assert.equal(await cloneWithChanges(join(root, 'base'), join(root, 'base'), join(root, 'target')), null);
      assert.equal(existsSync(join(root, 'target')), false);
      assert.equal(await preferPageSizedCopies(root), null, 'not XFS: nothing to tune, nothing to say');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test('a missing parent is an error, not a silent full copy', async () => {
    const root = mkdtempSync('/tmp/cellt-clone-');
    try {
      await assert.rejects(cloneWithChanges(join(root, 'nope'), join(root, 'nope'), join(root, 'target')), /ENOENT/);
      assert.equal(lstatSync(join(root, 'target'), { throwIfNoEntry: false }), undefined);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('parseFilefrag', () => {
  test('reads extents, their flags and blocks not placed yet, file by file', () => {
    const out = [
      'Filesystem type is: 58465342',
      'File size of /s/a b is 16384 (4 blocks of 4096 bytes)',
      ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '   0:        0..       0:      81926..     81926:      1:            ',
      '   1:        1..       3:         13..        15:      3:      81927: last,shared,eof',
      '/s/a b: 2 extents found',
      'File size of /s/c is 12288 (3 blocks of 4096 bytes)',
      ' ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '   0:        0..       2:          0..         0:      0:             last,unknown_loc,delalloc,eof',
      '/s/c: 1 extent found',
    ].join('\n');
    assert.deepEqual(Object.fromEntries(parseFilefrag(out)), {
      '/s/a b': [
        { start: 81926 * 4096, length: 4096, shared: false },
        { start: 13 * 4096, length: 3 * 4096, shared: true },
      ],
      '/s/c': [{ start: -1, length: 3 * 4096, shared: false }],
    });
  });

  test('CoveredRanges counts overlapping ranges once', () => {
    const c = new CoveredRanges();
    assert.equal(c.add([{ start: 0, length: 10 }, { start: 5, length: 10 }]), 15);
    assert.equal(c.add([{ start: 12, length: 10 }, { start: 100, length: 1 }]), 8);
    assert.equal(c.add([{ start: 0, length: 22 }]), 0);
  });
});
