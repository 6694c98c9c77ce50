import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { createOverlay } from '../../src/vmm/qemu/overlay.js';

const info = (path: string) => JSON.parse(execFileSync('qemu-img', ['info', '--output=json', path], { encoding: 'utf8' })) as { 'virtual-size': number; 'backing-filename'?: string; 'backing-filename-format'?: string };

test('overlays of one base are the bytes qemu-img makes, and a base replaced at the same path gets its own', async (t) => {
  const dir = mkdtempSync('/tmp/cellt-overlay-');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const base = join(dir, 'base.ext4');
  writeFileSync(base, '');
  truncateSync(base, 64 * 1024 * 1024);
  await createOverlay(join(dir, 'a.qcow2'), base);
  await createOverlay(join(dir, 'b.qcow2'), base); // from the kept bytes
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, join(dir, 'reference.qcow2')]);
  assert.deepEqual(readFileSync(join(dir, 'b.qcow2')), readFileSync(join(dir, 'reference.qcow2')));
  assert.equal(info(join(dir, 'b.qcow2'))['backing-filename'], base);
  await assert.rejects(createOverlay(join(dir, 'b.qcow2'), base), /EEXIST/, 'an overlay is never written over');

  // Another base at the same path (a new file, another size): not the old one's overlay.
  rmSync(base);
  writeFileSync(base, '');
  truncateSync(base, 128 * 1024 * 1024);
  await createOverlay(join(dir, 'c.qcow2'), base);
  assert.equal(info(join(dir, 'c.qcow2'))['virtual-size'], 128 * 1024 * 1024);
});
