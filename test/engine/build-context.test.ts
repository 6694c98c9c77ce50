/**
 * A build copies only what sits in its build file's folder, through symlinks too; checked before
 * any VM starts (fake backend, no QEMU).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
let ctx: string;
before(async () => {
  fake = await openFakeEngine();
  ctx = mkdtempSync('/tmp/cell-build-ctx-');
});
after(async () => {
  await fake?.cleanup();
  rmSync(ctx, { recursive: true, force: true });
});

test('a copy whose path leads out of the folder through a symlink is refused before anything boots', async () => {
  mkdirSync(join(ctx, 'site'));
  writeFileSync(join(ctx, 'site', 'index.html'), 'hi');
  symlinkSync('/etc', join(ctx, 'escape'));
  writeFileSync(join(ctx, 'build.toml'), 'base = "busybox"\n[[step]]\ncopy = "site"\nto = "/www"\n[[step]]\ncopy = "escape/shadow"\nto = "/loot"\n');
  const plan = await fake.engine.builds.load(join(ctx, 'build.toml'));
  const starts = fake.backend.starts.length;
  const built = fake.engine.builds.build(plan);
  await assert.rejects(built, (err: unknown) => {
    const e = err as { code?: string; message: string };
    assert.equal(e.code, 'bad_build_file');
    assert.match(e.message, /^line 5: copy .*escape\/shadow leads \(through a symlink\) to \/etc\/shadow, outside the build file's folder/);
    return true;
  });
  // The first step (inside the folder) may have run; the escaping one never started a VM.
  assert.ok(fake.backend.starts.length - starts <= 1);
  assert.equal(fake.engine.vms.list(true).length, 0, 'no VM is left');
});
