import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId, validateName } from '../domain/ids.js';
import { parseLabels } from '../domain/labels.js';
import type { VmRecord } from '../domain/vm.js';
import { mayHaveMachine } from '../domain/vm-state.js';
import { assertVolumesFree, DEFAULT_VOLUME_BYTES, validateVolumeSize, type VolumeMount, type VolumeRecord } from '../domain/volume.js';
import { writeEmptyExt4 } from '../host/empty-ext4.js';
import { allocatedBytes } from '../host/files.js';
import type { EngineContext } from './context.js';
import type { HostFs } from './host-fs.js';
import { exportVolume, importVolume } from './volume-archive.js';

/** A volume and who uses it: `running` are the VMs whose machine has it now. */
export interface VolumeView extends VolumeRecord {
  /** Bytes its image takes on the host (it is sparse). */
  usedBytes: number;
  /** Every VM whose spec mounts it, running or not. */
  users: { vm: string; name: string; path: string; readOnly: boolean; running: boolean }[];
}

/**
 * `cell volume`: named volumes, each a sparse ext4 image under volumes/ and a row in SQLite. The
 * image is made under a temporary name and renamed into place before its row is written, and a
 * removal deletes the row first: a kill -9 at any point leaves at most an image with no row, which
 * the next start sweeps. Who uses a volume is read from the VMs' specs, never stored twice.
 */
export class Volumes {
  /** Volumes an export reads now: no VM may boot writing one. */
  private readonly exporting = new Set<string>();

  constructor(private readonly ctx: Pick<EngineContext, 'stores' | 'paths' | 'locks' | 'db' | 'config'>) {}

  list(): Promise<VolumeView[]> {
    return Promise.all(this.ctx.stores.volumes.list().map((v) => this.view(v)));
  }

  inspect(name: string): Promise<VolumeView> {
    return this.view(this.require(name));
  }

  require(name: string): VolumeRecord {
    const found = this.ctx.stores.volumes.byName(name);
    if (!found) throw new CellError(ErrorCodes.NOT_FOUND, `no such volume: ${name} (cell volume ls)`);
    return found;
  }

  /** `cell volume create`: a new, empty volume. */
  async create(name: string, opts: { sizeBytes?: number; labels?: string[] } = {}): Promise<VolumeRecord> {
    validateName(name);
    const sizeBytes = validateVolumeSize(opts.sizeBytes ?? DEFAULT_VOLUME_BYTES);
    const labels = parseLabels(opts.labels);
    return this.ctx.locks.run(`volume:${name}`, async () => {
      if (this.ctx.stores.volumes.byName(name)) throw new CellError(ErrorCodes.CONFLICT, `a volume named ${name} exists already`);
      const record: VolumeRecord = { id: newId(), name, sizeBytes, createdAt: new Date().toISOString(), ...(labels ? { labels } : {}) };
      await this.makeImage(record);
      this.ctx.stores.volumes.insert(record);
      return record;
    });
  }

  /** `run -v NAME:/path`: the named volumes, made (default size) where missing, as Docker does. */
  async ensure(mounts: readonly VolumeMount[]): Promise<void> {
    for (const m of mounts) {
      if (!this.ctx.stores.volumes.byName(m.volume)) await this.create(m.volume).catch((err: unknown) => {
        // Made meanwhile by a concurrent run: as good.
        if (!(err instanceof CellError && err.code === ErrorCodes.CONFLICT)) throw err;
      });
    }
  }

  /**
   * `cell volume rm`: refused while a VM runs with it (even with force, as docker's); refused
   * while a stopped VM mounts it unless `force` (that VM's next start then says it is gone).
   */
  async remove(name: string, force = false): Promise<void> {
    const volume = this.require(name);
    return this.ctx.locks.run(`volume:${name}`, async () => {
      const users = this.users(volume);
      const running = users.filter((u) => u.running);
      if (running.length > 0) {
        throw new CellError(ErrorCodes.CONFLICT, `volume ${name} is in use by running VM ${[...new Set(running.map((u) => u.name))].join(', ')}: stop it first`);
      }
      if (users.length > 0 && !force) {
        throw new CellError(ErrorCodes.CONFLICT, `volume ${name} is mounted by VM ${[...new Set(users.map((u) => u.name))].join(', ')} (stopped): remove them first, or use -f (their next start will fail)`);
      }
      this.ctx.stores.volumes.delete(volume.id);
      await rm(this.ctx.paths.volumeImage(volume.id), { force: true });
    });
  }

  /** `cell volume export`: refused while a VM writes it (the image would be caught mid-write). */
  async export(name: string, file: string, host?: HostFs): Promise<{ bytes: number }> {
    const volume = this.require(name);
    // Checked and marked under the lock boots take: no writer can start while the image is read.
    await this.ctx.locks.run('volumes', async () => {
      const writers = this.users(volume).filter((u) => u.running && !u.readOnly);
      if (writers.length > 0) throw new CellError(ErrorCodes.CONFLICT, `volume ${name} is written by running VM ${writers.map((u) => u.name).join(', ')}: stop it to export a consistent copy`);
      if (this.exporting.has(volume.id)) throw new CellError(ErrorCodes.CONFLICT, `volume ${name} is being exported already`);
      this.exporting.add(volume.id);
    });
    try {
      return await exportVolume(this.ctx, volume, file, host);
    } finally {
      this.exporting.delete(volume.id);
    }
  }

  /** `cell volume import`: a volume from an export, under its own name or `name`. */
  async import(file: string, name?: string, host?: HostFs): Promise<VolumeRecord> {
    return this.ctx.locks.run('volume-import', () => importVolume(this.ctx, file, name, host));
  }

  /** `cell volume prune`: the volumes no VM mounts. */
  async prune(): Promise<VolumeRecord[]> {
    const removed: VolumeRecord[] = [];
    for (const volume of await this.list()) {
      if (volume.users.length > 0) continue;
      await this.remove(volume.name).then(
        () => removed.push(volume),
        () => {}, // taken meanwhile: kept
      );
    }
    return removed;
  }

  /**
   * Before VM `vm` boots (the caller holds the `volumes` lock through its state change to
   * starting): its volumes exist, and the one-writer rule holds against every VM holding disks.
   */
  checkAttach(vm: VmRecord): { imagePath: string; mountPoint: string; readOnly: boolean }[] {
    const mounts = vm.spec.volumes ?? [];
    if (mounts.length === 0) return [];
    const records = mounts.map((m) => {
      const record = this.ctx.stores.volumes.byName(m.volume);
      if (!record) throw new CellError(ErrorCodes.NOT_FOUND, `VM ${vm.name} mounts volume ${m.volume}, which is gone (cell volume create ${m.volume} makes a new, empty one)`);
      return record;
    });
    const live = this.ctx.stores.vms
      .list()
      .filter((other) => other.id !== vm.id && mayHaveMachine(other.state) && other.spec.volumes?.length)
      .map((other) => ({ name: other.name, mounts: other.spec.volumes! }));
    assertVolumesFree(mounts, live);
    const busy = mounts.find((m, i) => !m.readOnly && this.exporting.has(records[i]!.id));
    if (busy) throw new CellError(ErrorCodes.CONFLICT, `volume ${busy.volume} is being exported: mount it :ro, or start the VM once the export is done`);
    return mounts.map((m, i) => ({ imagePath: this.ctx.paths.volumeImage(records[i]!.id), mountPoint: m.path, readOnly: m.readOnly }));
  }

  /**
   * At start: images whose row never got written (a crash in create) or was deleted (one in rm),
   * and the staging folders of an export or import cut short.
   */
  async sweep(): Promise<void> {
    const known = new Set(this.ctx.stores.volumes.list().map((v) => `${v.id}.ext4`));
    const entries = await readdir(this.ctx.paths.volumes).catch(() => [] as string[]);
    for (const entry of entries) {
      if (!known.has(entry)) await rm(join(this.ctx.paths.volumes, entry), { recursive: true, force: true });
    }
  }

  private async view(volume: VolumeRecord): Promise<VolumeView> {
    return { ...volume, usedBytes: await allocatedBytes(this.ctx.paths.volumeImage(volume.id)), users: this.users(volume) };
  }

  /** Every VM whose spec mounts the volume; `running`: its machine holds the disk now. */
  private users(volume: VolumeRecord): VolumeView['users'] {
    return this.ctx.stores.vms.list().flatMap((vm) =>
      (vm.spec.volumes ?? []).filter((m) => m.volume === volume.name).map((m) => ({ vm: vm.id, name: vm.name, path: m.path, readOnly: m.readOnly, running: mayHaveMachine(vm.state) })),
    );
  }

  /** A sparse file of its size with an empty ext4 in it, published under its final name. */
  private async makeImage(volume: VolumeRecord): Promise<void> {
    await mkdir(this.ctx.paths.volumes, { recursive: true, mode: 0o700 });
    const tmp = join(this.ctx.paths.volumes, `.tmp-${volume.id}`);
    try {
      await writeEmptyExt4(tmp, volume.sizeBytes, volume.name.slice(0, 16), 0o600);
      await rename(tmp, this.ctx.paths.volumeImage(volume.id));
    } catch (err) {
      await rm(tmp, { force: true });
      throw new CellError(ErrorCodes.INTERNAL, `could not make volume ${volume.name}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
    }
  }
}
