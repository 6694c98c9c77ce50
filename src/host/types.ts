import type { ImageConfig } from '../domain/image.js';

/** One line of set-up progress, e.g. { step: 'kernel', status: 'cached', detail: '6.1.0-56-cloud-amd64' }. */
export interface SetupProgress {
  step: string;
  status: 'start' | 'done' | 'cached';
  detail?: string;
}

export type ProgressFn = (event: SetupProgress) => void;

/** Everything a VM boots from, all inside the cache dir. Digests are "sha256:<hex>". */
export interface HostAssets {
  kernel: { path: string; release: string; digest: string };
  initramfs: { path: string; digest: string };
  agent: { path: string; digest: string };
  builtinImages: BuiltinImage[];
}

export interface BuiltinImage {
  reference: string;
  digest: string;
  diskPath: string;
  sizeBytes: number;
  config: ImageConfig;
}
