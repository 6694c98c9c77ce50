import { Api } from '../api/routes.js';
import type { Image, ImageRef } from '../api/images.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { PullEvent } from './commands.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';
import type { RemoveOptions } from './vms.js';

const { images, registries } = Api;

export interface InsecureRegistriesOption {
  /** Hosts this call may reach over plain http (besides loopback and celld's CELL_INSECURE_REGISTRIES). */
  insecureRegistries?: string[];
}
export interface ImagePullOptions extends RequestOptions, InsecureRegistriesOption {
  platform?: string;
  onProgress?(e: PullEvent): void;
}
export interface ImagePushOptions extends RequestOptions, InsecureRegistriesOption {}
export interface ImageImportOptions extends RequestOptions {
  /** The reference to give it (default: the archive's). */
  reference?: string;
}
export interface ImagePruneOptions extends RequestOptions {
  maxBytes?: number;
}
export interface LoginOptions extends RequestOptions, InsecureRegistriesOption {}

/** An empty list is left out: celld's default then applies. */
const insecure = (opts: InsecureRegistriesOption) => (opts.insecureRegistries?.length ? { insecureRegistries: opts.insecureRegistries } : {});

/** Images: pull, import, push, export, prune, remove. */
export class ImagesClient {
  constructor(private readonly transport: Transport) {}

  list(opts: RequestOptions = {}): Promise<Image[]> {
    return this.transport.call(images.list, {}, opts);
  }

  async pull(reference: string, opts: ImagePullOptions = {}): Promise<ImageRef> {
    let image: ImageRef | undefined;
    const body = { reference, platform: opts.platform, ...insecure(opts) };
    for await (const event of this.transport.stream(images.pull, { body }, opts)) {
      if (event.type === 'pull') opts.onProgress?.(event.event);
      if (event.type === 'image') image = event.image;
    }
    if (!image) throw new CellError(ErrorCodes.INTERNAL, 'the pull ended without an image');
    return image;
  }

  /** `file` is an OCI archive on celld's host. */
  import(file: string, opts: ImageImportOptions = {}): Promise<ImageRef> {
    return this.transport.call(images.import, { body: { file, reference: opts.reference } }, opts);
  }

  remove(ref: string, opts: RemoveOptions = {}): Promise<void> {
    return this.transport.call(images.remove, { params: { ref }, query: { force: opts.force } }, opts);
  }

  /** Pushes local image `reference` to `target` (default: the same reference). */
  push(reference: string, target?: string, opts: ImagePushOptions = {}): Promise<{ digest: string; reference: string }> {
    return this.transport.call(images.push, { body: { reference, target, ...insecure(opts) } }, opts);
  }

  /** `file` is a path on celld's host. */
  export(reference: string, file: string, opts: RequestOptions = {}): Promise<{ digest: string; bytes: number }> {
    return this.transport.call(images.export, { body: { reference, file } }, opts);
  }

  prune(opts: ImagePruneOptions = {}): Promise<{ evicted: string[]; bytesFreed: number }> {
    return this.transport.call(images.prune, { body: { maxBytes: opts.maxBytes } }, opts);
  }
}

/** Registry credentials, stored by celld. */
export class RegistriesClient {
  constructor(private readonly transport: Transport) {}

  login(registry: string, username: string, password: string, opts: LoginOptions = {}): Promise<{ ok: boolean }> {
    return this.transport.call(registries.login, { body: { registry, username, password, ...insecure(opts) } }, opts);
  }

  logout(registry: string, opts: RequestOptions = {}): Promise<{ removed: boolean }> {
    return this.transport.call(registries.logout, { body: { registry } }, opts);
  }
}
