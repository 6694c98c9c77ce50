import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { ensureHostAssets, type HostAssets, type SetupProgress } from '../../src/host/index.js';
import { hasPvhEntryNote } from '../../src/host/elf.js';
import { bootGuest, type BootedGuest } from './guest-boot.js';

/**
 * The host set-up for real: packages, kernel download, agent build, initramfs, busybox image;
 * then a second, cached call; then a boot of the result that the agent answers. CELL_CACHE, when
 * set, is used (and kept) so repeated runs are fast; otherwise a temp cache is built and removed.
 */
const sharedCache = process.env.CELL_CACHE;
const cacheDir = sharedCache ?? mkdtempSync('/tmp/cell-host-cache-');

describe('ensureHostAssets', () => {
  let assets: HostAssets;
  const firstEvents: SetupProgress[] = [];
  let firstMs = 0;

  before(async () => {
    const t = Date.now();
    assets = await ensureHostAssets({ cacheDir, onProgress: (e) => firstEvents.push(e) });
    firstMs = Date.now() - t;
  });
  after(() => {
    if (!sharedCache) rmSync(cacheDir, { recursive: true, force: true });
  });

  it('produces the kernel, initramfs, agent and busybox image in the cache', (t) => {
    t.diagnostic(`first call: ${firstMs} ms; ${firstEvents.map((e) => `${e.step}:${e.status}`).join(', ')}`);
    for (const path of [assets.kernel.path, assets.initramfs.path, assets.agent.path, assets.builtinImages[0]!.diskPath]) {
      assert.ok(path.startsWith(cacheDir), `${path} is outside the cache`);
      assert.ok(statSync(path).size > 0, `${path} is empty`);
    }
    assert.match(assets.kernel.release, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    for (const digest of [assets.kernel.digest, assets.initramfs.digest, assets.agent.digest, assets.builtinImages[0]!.digest]) {
      assert.match(digest, /^sha256:[0-9a-f]{64}$/);
    }
    const image = assets.builtinImages[0]!;
    assert.equal(image.reference, 'busybox');
    assert.equal(image.sizeBytes, statSync(image.diskPath).size);
    assert.equal(`sha256:${execFileSync('sha256sum', [image.diskPath], { encoding: 'utf8' }).split(' ')[0]}`, image.digest);
    assert.deepEqual(image.config.Cmd, ['sh']);
    t.diagnostic(`initramfs ${statSync(assets.initramfs.path).size} bytes; image ${image.sizeBytes} bytes apparent`);
  });

  it('does nothing the second time: every step cached, no downloads, fast', async (t) => {
    const events: SetupProgress[] = [];
    const start = process.hrtime.bigint();
    const again = await ensureHostAssets({ cacheDir, onProgress: (e) => events.push(e) });
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    t.diagnostic(`cached call: ${ms.toFixed(1)} ms`);
    assert.deepEqual(again, assets);
    assert.deepEqual(
      events.filter((e) => e.status !== 'cached'),
      [],
      'a cached set-up must report every step as cached',
    );
    assert.deepEqual(new Set(events.map((e) => e.step)), new Set(['host packages', 'kernel', 'agent', 'initramfs', 'image busybox']));
    assert.ok(ms < 1000, `cached set-up took ${ms} ms`);
  });

  it('serialises concurrent set-ups on one cache', async () => {
    const [a, b] = await Promise.all([ensureHostAssets({ cacheDir }), ensureHostAssets({ cacheDir })]);
    assert.deepEqual(a, assets);
    assert.deepEqual(b, assets);
    assert.equal(existsSync(`${cacheDir}/setup.lock`), false);
  });

  it("keeps the kernel unpacked: an ELF with the PVH entry QEMU boots without the guest's decompression", () => {
    const image = readFileSync(assets.kernel.path);
    assert.ok(assets.kernel.path.endsWith('/vmlinux'), `kernel image ${assets.kernel.path}`);
    assert.ok(hasPvhEntryNote(image));
    assert.equal(`sha256:${execFileSync('sha256sum', [assets.kernel.path], { encoding: 'utf8' }).split(' ')[0]}`, assets.kernel.digest);
  });

  it('builds an initramfs with /init, /dev/console and the modules in load order', () => {
    const raw = gunzipSync(readFileSync(assets.initramfs.path));
    const listing = execFileSync('cpio', ['-it', '--quiet'], { input: raw, encoding: 'utf8' }).split('\n').filter(Boolean);
    for (const entry of ['init', 'dev/console', 'proc', 'sys', 'newroot', 'etc/cell/modules']) {
      assert.ok(listing.includes(entry), `initramfs lacks ${entry}`);
    }
    const dir = mkdtempSync('/tmp/cell-initramfs-');
    try {
      execFileSync('cpio', ['-id', '--quiet', 'etc/cell/modules', 'init'], { input: raw, cwd: dir });
      const modules = readFileSync(`${dir}/etc/cell/modules`, 'utf8').trim().split('\n');
      const index = (name: string) => modules.findIndex((m) => m.endsWith(`/${name}.ko`));
      for (const [dep, user] of [
        ['virtio_ring', 'virtio'],
        ['virtio', 'virtio_mmio'],
        ['virtio', 'virtio_blk'],
        ['virtio', 'virtio_console'],
        ['virtio', 'virtio-rng'],
        ['failover', 'net_failover'],
        ['net_failover', 'virtio_net'],
      ] as const) {
        assert.ok(index(dep) >= 0 && index(dep) < index(user), `${dep} must load before ${user}: ${modules.join(' ')}`);
      }
      for (const m of modules) assert.ok(listing.includes(m.slice(1)), `listed module ${m} is not in the initramfs`);
      assert.ok(readFileSync(`${dir}/init`).equals(readFileSync(assets.agent.path)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('a real boot of the assets', () => {
    let guest: BootedGuest | null = null;
    before(async () => {
      guest = await bootGuest({
        kernel: assets.kernel.path,
        initrd: assets.initramfs.path,
        baseDisk: assets.builtinImages[0]!.diskPath,
        hostname: 't1',
        deadlineMs: 30_000,
      });
    });
    // Always: a QEMU we started must not outlive the test.
    after(async () => {
      await guest?.kill();
    });

    it('answers PING', (t) => {
      t.diagnostic(`QEMU spawn to first PONG: ${guest!.pongMs} ms`);
      assert.ok(guest!.pongMs > 0);
    });

    it('runs hostname with the name from the kernel command line', async () => {
      const r = await guest!.exec(['hostname']);
      assert.deepEqual(r, { stdout: 't1\n', stderr: '', code: 0, signaled: false }, guest!.serialTail());
    });

    it('has busybox applets on the root disk', async () => {
      const r = await guest!.exec(['ls', '/bin/sh']);
      assert.equal(r.stdout, '/bin/sh\n');
      assert.equal(r.code, 0);
      const uname = await guest!.exec(['uname', '-r']);
      assert.equal(uname.stdout.trim(), assets.kernel.release);
    });

    it('has /etc/hostname matching the hostname', async () => {
      const r = await guest!.exec(['cat', '/etc/hostname']);
      assert.equal(r.code, 0);
      assert.equal(r.stdout, 't1\n');
    });
  });
});
