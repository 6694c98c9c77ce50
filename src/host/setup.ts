import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureAgent } from './agent-build.js';
import { ensureBusyboxImage } from './busybox-image.js';
import { ensureInitramfs } from './initramfs.js';
import { ensureKernel } from './kernel.js';
import { adoptOwnKernel } from './own-kernel.js';
import { ensureHostPackages } from './packages.js';
import { acquireSetupLock } from './setup-lock.js';
import type { HostAssets, ProgressFn } from './types.js';

export interface EnsureHostAssetsOptions {
  /** CELL_CACHE, or CELL_HOME/cache. */
  cacheDir: string;
  /** Install missing host packages with apt (needs root). Default true. */
  install?: boolean;
  onProgress?: ProgressFn;
  /** The directory of the guest agent's *.c and *.h files; guest/ by default (found above this module). */
  agentSource?: string;
  /** A kernel of the operator's own with its drivers built in (own-kernel.ts) instead of Debian's. */
  guestKernel?: string;
}

/**
 * Everything a VM boots from, built once and content-addressed under the cache dir: host
 * packages, the guest kernel and modules, the static agent, the initramfs, the built-in busybox
 * image. A repeated call only reads small manifests (no hashing of large files, no apt) and
 * reports every step as cached.
 */
export async function ensureHostAssets(opts: EnsureHostAssetsOptions): Promise<HostAssets> {
  const { cacheDir, onProgress } = opts;
  const install = opts.install ?? true;
  await mkdir(cacheDir, { recursive: true });
  const release = await acquireSetupLock(cacheDir, { onProgress });
  try {
    // Temp dirs left by a set-up that died; nobody else uses them while we hold the lock.
    await rm(join(cacheDir, 'tmp'), { recursive: true, force: true });
    await ensureHostPackages({ install, onProgress });

    // Independent of each other; the initramfs needs both the kernel's modules and the agent.
    const [kernel, agent, image] = await settleAll([
      opts.guestKernel
        ? adoptOwnKernel({ cacheDir, path: opts.guestKernel, onProgress })
        : ensureKernel({ cacheDir, mayUpdateApt: install && process.getuid?.() === 0, onProgress }),
      ensureAgent({ cacheDir, source: opts.agentSource, onProgress }),
      ensureBusyboxImage({ cacheDir, onProgress }),
    ] as const);
    const initramfs = await ensureInitramfs({ cacheDir, agent, kernel, onProgress });

    return {
      kernel: { path: kernel.imagePath, release: kernel.release, digest: kernel.digest },
      initramfs: { path: initramfs.path, digest: initramfs.digest },
      agent: { path: agent.path, digest: agent.digest },
      builtinImages: [image],
    };
  } finally {
    await release();
  }
}

/**
 * Promise.all that waits for every step to finish before failing, so nothing is still writing
 * into the cache after the lock is released.
 */
async function settleAll<T extends readonly unknown[]>(promises: { [K in keyof T]: Promise<T[K]> }): Promise<T> {
  const results = await Promise.allSettled(promises);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}
