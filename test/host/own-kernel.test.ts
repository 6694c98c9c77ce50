import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { CellError } from '../../src/domain/errors.js';
import { parseConfig, withEnvironment } from '../../src/domain/config.js';
import { ensureInitramfs } from '../../src/host/initramfs.js';
import { adoptOwnKernel } from '../../src/host/own-kernel.js';
import type { SetupProgress } from '../../src/host/types.js';
import { bzImage, elf, PVH } from '../helpers/kernel-files.js';

/**
 * A guest kernel of the operator's own (guestKernel, CELL_GUEST_KERNEL): checked, copied into the
 * cache by content, booted without modules. The boot itself with a kernel built from Debian's
 * source is bench/built-kernel.sh's (scripts/build-guest-kernel.sh takes 3-9 minutes on these hosts).
 */
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function scratch(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'cellt-ownkernel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('a guest kernel of your own', () => {
  const vmlinux = elf([PVH]);

  it('is copied into the cache by content, with no modules, and found there the second time', async (t) => {
    const dir = scratch(t);
    const path = join(dir, 'vmlinux');
    writeFileSync(path, vmlinux);
    const events: SetupProgress[] = [];
    const kernel = await adoptOwnKernel({ cacheDir: join(dir, 'cache'), path, onProgress: (e) => events.push(e) });
    assert.equal(kernel.digest, `sha256:${sha(vmlinux)}`);
    assert.equal(kernel.imagePath, join(dir, 'cache', 'kernel-own', sha(vmlinux), 'vmlinux'));
    assert.ok(readFileSync(kernel.imagePath).equals(vmlinux));
    assert.deepEqual(kernel.manifest.modules, []);
    assert.equal(kernel.release, `own-${sha(vmlinux).slice(0, 12)}`);
    assert.equal(events.at(-1)?.status, 'done');

    // The file may change or go: VMs and snapshots keep the copy their digest names.
    rmSync(path);
    writeFileSync(path, vmlinux);
    const again = await adoptOwnKernel({ cacheDir: join(dir, 'cache'), path, onProgress: (e) => events.push(e) });
    assert.equal(again.imagePath, kernel.imagePath);
    assert.equal(events.at(-1)?.status, 'cached');
  });

  it("unpacks a bzImage's payload to the ELF QEMU boots directly", async (t) => {
    const dir = scratch(t);
    const path = join(dir, 'bzImage');
    writeFileSync(path, bzImage(gzipSync(vmlinux)));
    const kernel = await adoptOwnKernel({ cacheDir: join(dir, 'cache'), path });
    assert.equal(kernel.manifest.image.format, 'elf');
    assert.ok(readFileSync(kernel.imagePath).equals(vmlinux));
    assert.equal(kernel.digest, `sha256:${sha(vmlinux)}`);
  });

  it('refuses what QEMU could not boot, saying why, and leaves nothing in the cache', async (t) => {
    const dir = scratch(t);
    const cacheDir = join(dir, 'cache');
    const cases: [string, Buffer | null, RegExp][] = [
      ['missing', null, /guest kernel .*missing: no such file/],
      ['no-pvh', elf([{ name: 'GNU', type: 3, desc: Buffer.alloc(20) }]), /without a PVH entry note/],
      ['text', Buffer.from('#!/bin/sh\necho not a kernel\n'), /neither an ELF vmlinux nor a bzImage/],
      ['short-elf', Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2]), /guest kernel .*short-elf/],
    ];
    for (const [name, content, message] of cases) {
      const path = join(dir, name);
      if (content) writeFileSync(path, content);
      await assert.rejects(adoptOwnKernel({ cacheDir, path }), (err: unknown) => err instanceof CellError && err.code === 'setup_failed' && message.test(err.message));
    }
    await assert.rejects(adoptOwnKernel({ cacheDir, path: dir }), /not a regular file/);
    assert.equal(existsSync(cacheDir), false, 'checked before anything is written');
  });

  it('makes an initramfs that loads no modules', async (t) => {
    const dir = scratch(t);
    const path = join(dir, 'vmlinux');
    writeFileSync(path, vmlinux);
    const cacheDir = join(dir, 'cache');
    const kernel = await adoptOwnKernel({ cacheDir, path });
    const agentPath = join(dir, 'agent');
    writeFileSync(agentPath, 'an agent');
    const initramfs = await ensureInitramfs({ cacheDir, agent: { path: agentPath, digest: `sha256:${sha(Buffer.from('an agent'))}`, key: 'k' }, kernel, compression: 'none' });
    const listing = execFileSync('cpio', ['-it', '--quiet'], { input: readFileSync(initramfs.path), encoding: 'utf8' }).split('\n');
    assert.ok(listing.includes('init') && listing.includes('etc/cell/modules'));
    assert.deepEqual(listing.filter((f) => f.endsWith('.ko')), []);
    const out = join(dir, 'tree');
    execFileSync('sh', ['-c', `mkdir -p ${out} && cd ${out} && cpio -id --quiet < ${initramfs.path}`]);
    assert.equal(readFileSync(join(out, 'etc/cell/modules'), 'utf8').trim(), '');
  });

  it('is a setting (guestKernel) and CELL_GUEST_KERNEL, an absolute path either way', () => {
    assert.equal(parseConfig({ guestKernel: '/srv/vmlinux' }, 'config.json').guestKernel, '/srv/vmlinux');
    assert.throws(() => parseConfig({ guestKernel: 'vmlinux' }, 'config.json'), /guestKernel must be an absolute path/);
    assert.equal(withEnvironment({ guestKernel: '/a' }, { CELL_GUEST_KERNEL: '/b' }).guestKernel, '/b');
    assert.throws(() => withEnvironment({}, { CELL_GUEST_KERNEL: 'rel/vmlinux' }), /CELL_GUEST_KERNEL must be an absolute path/);
  });
});
