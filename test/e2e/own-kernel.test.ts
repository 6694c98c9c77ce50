import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SHARED_CACHE, TestHome } from '../helpers/cell-home.js';

/**
 * celld booting a guest kernel of the operator's own (CELL_GUEST_KERNEL; docs/guest-kernel.md),
 * with real QEMU. The kernel here is Debian's own vmlinux from the shared cache: bootable, but its
 * drivers are modules and an own kernel's initramfs carries none, so the guest cannot find its
 * disk. That is the mistake an operator makes with a kernel not built for cellvm: the run must fail
 * with the guest's own reason, and leave nothing. A kernel built for it (scripts/build-guest-kernel.sh
 * builds one from Debian's source in 3-9 minutes, too long for this suite) runs everything.
 */
describe('a guest kernel of your own', () => {
  const homes: TestHome[] = [];
  after(async () => {
    for (const h of homes) await h.cleanup();
  });

  function debianVmlinux(): string {
    const root = join(SHARED_CACHE, 'kernel');
    const release = readdirSync(root).find((d) => readdirSync(join(root, d)).includes('vmlinux'));
    assert.ok(release, `an unpacked kernel in ${root}`);
    return join(root, release, 'vmlinux');
  }

  test('a kernel without the drivers built in: the run fails with the guest agent\'s reason, nothing is left', async () => {
    const h = new TestHome({ CELL_GUEST_KERNEL: debianVmlinux() });
    homes.push(h);
    const info = await h.ok(['info']);
    assert.match(info.stdout, /Guest kernel: own-[0-9a-f]{12}/);
    const r = await h.cell(['run', '--rm', 'busybox', '--', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^error: VM failed to boot/);
    assert.match(r.stderr, /cell-agent: FATAL: no disk with serial cell-root/, 'the serial console says why');
    assert.equal(JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout).length, 0);
    assert.deepEqual(h.qemuPids(), []);
  });

  test('a kernel that is not there, or not a kernel: one line naming it, before any VM exists', async () => {
    const missing = new TestHome({ CELL_GUEST_KERNEL: '/nonexistent/vmlinux' });
    const notKernel = new TestHome({ CELL_GUEST_KERNEL: '/etc/hostname' });
    homes.push(missing, notKernel);
    for (const [h, message] of [
      [missing, /^error: guest kernel \/nonexistent\/vmlinux: no such file$/],
      [notKernel, /^error: guest kernel \/etc\/hostname: neither an ELF vmlinux nor a bzImage$/],
    ] as const) {
      const r = await h.cell(['run', '--rm', 'busybox', '--', 'true']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr.trim(), message);
      assert.equal(JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout).length, 0);
    }
  });
});
