import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { ImageRecord } from '../domain/image.js';
import {
  collectGarbage,
  evictImages,
  exportImage,
  formatReference,
  importArchive,
  login,
  logout,
  pushImage,
  parseReference,
  pullImage,
  removeImageReference,
  sweepImageStore,
  type PullProgressFn,
} from '../image/index.js';
import { ImagePins } from '../store/image-pins.js';
import { ContentGate } from './content-gate.js';
import { CELLD_HOST_FS, hostPathError, writeHostFile, type HostFs } from './host-fs.js';
import type { EngineContext } from './context.js';

export interface PullRequest {
  reference: string;
  platform?: string;
  /** Registries (host[:port]) this request may reach over plain http, besides CELL_INSECURE_REGISTRIES. */
  insecureRegistries?: string[];
  onProgress?: PullProgressFn;
  signal?: AbortSignal;
}

/**
 * Images as the engine sees them: built-in ones (made by host set-up) and ones pulled from OCI
 * registries or imported from archives. A short name resolves to a local image first (`busybox`
 * is the built-in one), then to its full Docker-style reference.
 */
export class Images {
  private readonly pins: ImagePins;
  /** Pulls, imports, pushes and exports lease the store; GC waits for them (content-gate.ts). */
  private readonly gate = new ContentGate();

  constructor(private readonly ctx: EngineContext) {
    this.pins = new ImagePins(ctx.db);
  }

  list(): ImageRecord[] {
    return this.ctx.stores.images.list();
  }

  /** The local image a reference names, or undefined. */
  find(reference: string): ImageRecord | undefined {
    const store = this.ctx.stores.images;
    const bare = reference.endsWith(':latest') ? reference.slice(0, -':latest'.length) : reference;
    const local = store.get(reference) ?? store.get(bare);
    if (local) return local;
    try {
      return store.get(formatReference(parseReference(reference)));
    } catch {
      return undefined;
    }
  }

  require(reference: string): ImageRecord {
    const image = this.find(reference);
    if (!image) {
      const known = this.list().map((i) => i.reference);
      throw new CellError(
        ErrorCodes.IMAGE_NOT_FOUND,
        `unknown image "${reference}": pull it first (cell pull ${reference})` + (known.length ? `; local images: ${known.join(', ')}` : ''),
      );
    }
    return image;
  }

  async pull(req: PullRequest): Promise<ImageRecord> {
    await this.ctx.host.ensure();
    const image = await this.gate.withShared(() => pullImage({
      reference: req.reference,
      platform: req.platform,
      storeRoot: this.ctx.paths.home,
      db: this.ctx.db,
      onProgress: req.onProgress,
      credentialsPath: join(this.ctx.paths.home, 'credentials.json'),
      insecureRegistries: this.insecureRegistries(req.insecureRegistries),
      signal: req.signal,
      checkpoint: this.ctx.checkpoint,
    }));
    await this.enforceCacheCap(image);
    return image;
  }

  /** The local image, pulling it first when it is not here (what `cell run IMAGE` does). */
  async ensure(reference: string, onProgress?: PullProgressFn): Promise<ImageRecord> {
    return this.find(reference) ?? (await this.pull({ reference, onProgress }));
  }

  /** Imports the archive at `file`, read with `host`'s access (the caller's: engine/host-fs.ts). */
  async importArchive(file: string, reference?: string, host: HostFs = CELLD_HOST_FS): Promise<ImageRecord> {
    await this.ctx.host.ensure();
    const archive = await host.openRead(file).catch(hostPathError(file));
    const image = await this.gate
      .withShared(() =>
        importArchive({
          file,
          source: archive.path,
          storeRoot: this.ctx.paths.home,
          db: this.ctx.db,
          reference,
          checkpoint: this.ctx.checkpoint,
          ...(this.ctx.config.importMaxBytes !== undefined ? { maxArchiveBytes: this.ctx.config.importMaxBytes } : {}),
        }),
      )
      .finally(() => archive.close());
    await this.enforceCacheCap(image);
    return image;
  }

  /**
   * At start-up: what a dead celld's pulls and imports left (partial blobs, staging, unrecorded
   * disks, blobs nothing pins) goes now, not at the next GC; returns the bytes freed.
   */
  async sweepAfterStart(): Promise<number> {
    const gc = await this.gate.withExclusive(() => sweepImageStore({ storeRoot: this.ctx.paths.home, db: this.ctx.db }));
    return gc.bytesFreed;
  }

  /** Removes a reference; refused while a VM or snapshot uses the image, unless `force`. */
  async remove(reference: string, force = false): Promise<void> {
    const image = this.require(reference);
    if (image.builtin) throw new CellError(ErrorCodes.CONFLICT, `${image.reference} is built in: it cannot be removed`);
    const users = [
      ...this.ctx.stores.vms.list().filter((vm) => vm.spec.imageDigest === image.digest).map((vm) => `VM ${vm.name}`),
      ...this.ctx.stores.snapshots.list().filter((s) => s.spec.imageDigest === image.digest).map((s) => `snapshot ${s.name}`),
    ];
    if (users.length > 0 && !force) {
      throw new CellError(ErrorCodes.CONFLICT, `image ${image.reference} is in use by ${users.join(', ')}: remove them or use --force`);
    }
    // Unpinned blobs and disks go now; a forced removal keeps what VMs and snapshots still pin.
    await this.gate.withExclusive(async () => {
      removeImageReference(this.ctx.db, image.reference);
      await collectGarbage({ storeRoot: this.ctx.paths.home, db: this.ctx.db, graceMs: 0 });
    });
  }

  /** Uploads a local image to a registry under `target` (blobs it already has are skipped). */
  push(reference: string, target: string, insecure: string[] = []): Promise<{ digest: string; reference: string }> {
    const image = this.require(reference);
    if (image.builtin) throw new CellError(ErrorCodes.CONFLICT, `${image.reference} is built in and has no OCI manifest to push`);
    return this.gate.withShared(() => pushImage({ image: image.reference, reference: target, storeRoot: this.ctx.paths.home, db: this.ctx.db, ...this.registryAccess(insecure) }));
  }

  /** Checks the credentials against the registry, then stores them (mode 0600). */
  login(registry: string, username: string, password: string, insecure: string[] = []): Promise<void> {
    return login({ registry, username, password, ...this.registryAccess(insecure) });
  }

  logout(registry: string): Promise<boolean> {
    return logout({ registry, credentialsPath: this.registryAccess().credentialsPath });
  }

  /** Writes an OCI-layout tar of a local image. */
  export(reference: string, file: string, host: HostFs = CELLD_HOST_FS): Promise<{ digest: string; bytes: number }> {
    const image = this.require(reference);
    return this.gate.withShared(() =>
      writeHostFile(host, file, (writeTo) => exportImage({ reference: image.reference, file, writeTo, storeRoot: this.ctx.paths.home, db: this.ctx.db })),
    );
  }

  /**
   * Frees space: with `maxBytes`, evicts least recently used images until their disks fit;
   * always removes blobs and disks no image, VM or snapshot pins.
   */
  prune(opts: { maxBytes?: number } = {}): Promise<{ evicted: string[]; bytesFreed: number }> {
    const root = { storeRoot: this.ctx.paths.home, db: this.ctx.db, graceMs: 0 };
    return this.gate.withExclusive(async () => {
      if (opts.maxBytes !== undefined) {
        const { evicted, gc } = await evictImages({ ...root, maxBytes: opts.maxBytes });
        return { evicted, bytesFreed: gc.bytesFreed };
      }
      const gc = await collectGarbage(root);
      return { evicted: [], bytesFreed: gc.bytesFreed };
    });
  }

  /** celld's insecure registries (config.json, CELL_INSECURE_REGISTRIES) plus a request's own. */
  private insecureRegistries(extra: string[] = []): string[] {
    return [...new Set([...(this.ctx.config.insecureRegistries ?? []), ...extra.map((s) => s.trim()).filter(Boolean)])];
  }

  /** With imageCacheMaxBytes set, least recently used images past the cap go (never `keep`). */
  private async enforceCacheCap(keep: ImageRecord): Promise<void> {
    const max = this.ctx.config.imageCacheMaxBytes;
    if (max === undefined) return;
    this.pins.pin('pull', keep.digest, [keep.digest]);
    try {
      await this.ctx.checkpoint('image-cap:pinned');
      await this.gate.withExclusive(() => evictImages({ storeRoot: this.ctx.paths.home, db: this.ctx.db, maxBytes: max, graceMs: 0 }));
    } finally {
      this.pins.unpin('pull', keep.digest);
    }
  }

  /** Where credentials are kept and which registries may be plain http (config plus `insecure`). */
  registryAccess(insecure: string[] = []) {
    return { credentialsPath: join(this.ctx.paths.home, 'credentials.json'), insecureRegistries: this.insecureRegistries(insecure) };
  }

  pin(kind: 'vm' | 'snapshot', id: string, imageDigest: string): void {
    this.pins.pin(kind, id, [imageDigest]);
  }

  unpin(kind: 'vm' | 'snapshot', id: string): void {
    this.pins.unpin(kind, id);
  }
}

