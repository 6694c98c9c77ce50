import { ensureHostAssets, type HostAssets, type SetupProgress } from '../host/index.js';
import { detectAccelerator, qemuVersion, type AcceleratorVerdict } from '../vmm/qemu/accelerator.js';
import type { ImageStore } from '../store/image-store.js';

export interface HostReady {
  assets: HostAssets;
  accelerator: AcceleratorVerdict;
  qemuVersion: string;
}

export type ProgressListener = (event: SetupProgress) => void;

/**
 * Host set-up happens once per daemon: the first caller runs it (with progress), later callers
 * share the result. A failed set-up is not cached, so fixing the host and retrying works.
 */
export class HostReadiness {
  private ready: Promise<HostReady> | null = null;
  private readonly listeners = new Set<ProgressListener>();

  constructor(
    private readonly cacheDir: string,
    private readonly images: ImageStore,
    /** The operator's own guest kernel (config guestKernel), else Debian's. */
    private readonly guestKernel?: string,
  ) {}

  ensure(onProgress?: ProgressListener, opts: { reprobe?: boolean } = {}): Promise<HostReady> {
    if (onProgress) this.listeners.add(onProgress);
    if (opts.reprobe) this.ready = null;
    if (!this.ready) {
      this.ready = this.prepare(opts.reprobe ?? false).catch((err: unknown) => {
        this.ready = null;
        throw err;
      });
    }
    return this.ready.finally(() => {
      if (onProgress) this.listeners.delete(onProgress);
    });
  }

  private emit(event: SetupProgress): void {
    for (const l of this.listeners) l(event);
  }

  private async prepare(reprobe: boolean): Promise<HostReady> {
    const assets = await ensureHostAssets({ cacheDir: this.cacheDir, install: true, onProgress: (e) => this.emit(e), ...(this.guestKernel ? { guestKernel: this.guestKernel } : {}) });
    const now = new Date().toISOString();
    for (const image of assets.builtinImages) {
      const existing = this.images.get(image.reference);
      if (existing?.digest === image.digest && existing.diskPath === image.diskPath) continue;
      this.images.upsert({
        reference: image.reference,
        digest: image.digest,
        diskPath: image.diskPath,
        sizeBytes: image.sizeBytes,
        config: image.config,
        builtin: true,
        createdAt: now,
        lastUsed: null,
      });
    }
    this.emit({ step: 'accelerator', status: 'start' });
    const accelerator = await detectAccelerator({
      cacheDir: this.cacheDir,
      kernelPath: assets.kernel.path,
      initrdPath: assets.initramfs.path,
      force: reprobe,
    });
    this.emit({ step: 'accelerator', status: 'done', detail: `${accelerator.accelerator} (${accelerator.reason})` });
    return { assets, accelerator, qemuVersion: await qemuVersion() };
  }
}
