import { mergeLabels, type Labels } from '../domain/labels.js';
import { forkPorts } from '../domain/network.js';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { link, mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheEntryFor, type PendingCacheEntry } from '../domain/action.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { mountsBlockingSnapshot } from '../domain/volume.js';
import { newId, resolveRef, validateName } from '../domain/ids.js';
import { assertCompatible, type SnapshotRecord } from '../domain/snapshot.js';
import type { VmRecord } from '../domain/vm.js';
import { compatKey, type EngineContext } from './context.js';
import type { Images } from './images.js';
import { guestHostname } from './vm-records.js';
import type { Spare, SparePool } from './spare-pool.js';
import { checkPoolSetting, type PoolSetting, type PoolStatus } from '../domain/pool.js';
import { collectRetiredSnapshots } from './retired-snapshots.js';
import { clearRestoring, markRestoring } from './restore-intent.js';
import { exportSnapshot, importSnapshot } from './snapshot-archive.js';
import { pullSnapshot, pushSnapshot, type PullTransfer, type PushResult, type TransferProgress } from './snapshot-registry.js';
import { formatReference, parseReference } from '../image/reference.js';
import { CELLD_HOST_FS, type HostFs } from './host-fs.js';
import { stagingDir, takeSnapshot, type SnapshotIntent } from './snapshot-take.js';
import type { Vms } from './vms.js';


export interface TakeSnapshotOptions {
  name?: string;
  /** Leave the VM stopped afterwards instead of resuming it. */
  stop?: boolean;
  /** An action's cache entry for the snapshot, recorded in the same transaction. */
  cache?: PendingCacheEntry;
  /** Added to the VM's labels (parsed: domain/labels.ts). */
  labels?: Labels;
  /** `pause --to-disk` (vm-suspend.ts): a private snapshot, the VM left `suspended`. */
  suspend?: boolean;
}

export interface ForkOptions {
  count?: number;
  /** Fork names are PREFIX-1, PREFIX-2, ...; default: the snapshot's name. */
  namePrefix?: string;
  /** The exact name of a single fork (`run --from --name`). */
  name?: string;
  /** Spec fields that differ from the snapshot's (`run --from`: the command, env, timeout, --rm). */
  overrides?: Partial<Pick<VmRecord['spec'], 'cmd' | 'env' | 'workingDir' | 'user' | 'timeoutSec' | 'autoRemove' | 'template' | 'ports' | 'health' | 'timeouts'>>;
  /** Added to the snapshot's labels. */
  labels?: Labels;
  /** Each fork gets a private writable copy of the RAM (see RestoreRequest.copyMemory). */
  copyMemory?: boolean;
  /** Forks an engine operation makes and removes (an action's): removed after a crash. */
  ephemeral?: boolean;
}

export const MAX_FORKS = 64;

/**
 * Snapshots and forks. A snapshot is three files under snapshots/<id>/: `memory` (the guest's RAM,
 * mapped copy-on-write by every VM restored from it, so forks share its pages), `state` (device
 * state, tens of KiB) and `disk.qcow2` (the VM's disk layer, frozen). Once written they never
 * change.
 */
export class Snapshots {
  constructor(
    private readonly ctx: EngineContext,
    private readonly vms: Vms,
    private readonly spares: SparePool,
    private readonly images: Images,
  ) {}

  list(): SnapshotRecord[] {
    return this.ctx.stores.snapshots.list();
  }

  get(id: string): SnapshotRecord | undefined {
    return this.ctx.stores.snapshots.get(id);
  }

  nameExists(name: string): boolean {
    return this.ctx.stores.snapshots.nameExists(name);
  }

  resolve(ref: string): SnapshotRecord {
    return resolveRef('snapshot', ref, this.ctx.stores.snapshots.matching(ref));
  }

  /** A snapshot with its pool, if it has one (as `snapshot inspect` shows it). */
  async inspect(ref: string): Promise<SnapshotRecord & { pool?: PoolStatus }> {
    const snapshot = this.resolve(ref);
    const pool = await this.spares.status(snapshot.id);
    return { ...snapshot, ...(pool ? { pool } : {}) };
  }

  /** Every snapshot, those with a pool with its status. */
  async listWithPools(): Promise<(SnapshotRecord & { pool?: PoolStatus })[]> {
    return Promise.all(
      this.list().map(async (snapshot) => {
        const pool = await this.spares.status(snapshot.id);
        return { ...snapshot, ...(pool ? { pool } : {}) };
      }),
    );
  }

  /**
   * Keeps `size` spares of the snapshot ready for its forks (0: none), exact or warm
   * (docs/pools.md); they are made in the background, so this returns at once.
   */
  async setPool(ref: string, setting: PoolSetting): Promise<SnapshotRecord & { pool?: PoolStatus }> {
    const snapshot = this.resolve(ref);
    checkPoolSetting(setting.size, setting.warm);
    if (setting.size > 0) {
      if (!this.ctx.backend.capabilities.snapshots) throw new CellError(ErrorCodes.INVALID_STATE, 'this backend cannot restore snapshots, so it keeps no spares');
      assertCompatible(snapshot.compat, compatKey(this.ctx, await this.ctx.host.ensure()), snapshot.name);
    }
    await this.ctx.locks.run(snapshot.id, () => this.spares.setPool(snapshot, setting));
    return this.inspect(snapshot.id);
  }

  /**
   * Pauses the VM, saves its RAM, device state and disk layer, and resumes it restored from the
   * new snapshot (so it too maps the frozen RAM copy-on-write and runs on a fresh overlay).
   */
  take(vmRef: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotRecord> {
    const vm = this.vms.resolve(vmRef);
    if (opts.name !== undefined) validateName(opts.name);
    return this.ctx.locks.run(vm.id, () => this.takeLocked(vm.id, opts));
  }

  /** `take` with the VM's lock held (vm-suspend.ts takes it for more than the snapshot). */
  async takeLocked(id: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotRecord> {
    const { stores } = this.ctx;
    const vm = stores.vms.get(id)!;
    const current = vm;
    if (current.state === 'paused') throw new CellError(ErrorCodes.VM_PAUSED, `VM ${vm.name} is paused: unpause it to snapshot it (cell unpause ${vm.name})`);
    if (current.state !== 'running') {
      throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state}): only a running VM can be snapshotted`);
    }
    const blocking = mountsBlockingSnapshot(current.spec);
    if (blocking) {
      throw new CellError(
        ErrorCodes.CONFLICT,
        `VM ${vm.name} ${blocking}: a snapshot (or pause --to-disk) of a VM with host folders is refused (virtio-fs cannot be saved, and the folder would change under the saved RAM: docs/volumes.md)`,
      );
    }
    const name = opts.name ?? `${vm.name}-snap-${randomBytes(2).toString('hex')}`;
    if (stores.snapshots.nameExists(name)) throw new CellError(ErrorCodes.CONFLICT, `the name "${name}" is already in use by another snapshot`);
    const ready = await this.ctx.host.ensure();
    const intent: SnapshotIntent = {
      vm: vm.id,
      resume: !opts.stop && !opts.suspend,
      ...(opts.suspend ? { suspend: true } : {}),
      record: {
        id: newId(),
        name,
        parentVm: vm.id,
        parentVmName: vm.name,
        parentSnapshot: current.baseSnapshot,
        spec: { ...current.spec, ...labelsOf(mergeLabels(current.spec.labels, opts.labels)) },
        compat: compatKey(this.ctx, ready),
        createdAt: new Date().toISOString(),
      },
      ...(opts.cache ? { cache: opts.cache } : {}),
    };
    return takeSnapshot(this.ctx, this.vms, this.images, current, intent);
  }

  /**
   * A snapshot here, or a registry reference (it has a '/', which no snapshot name has) pulled on
   * first use, as `docker run` pulls an image: later forks of the reference use the pulled one.
   */
  async resolveOrPull(ref: string): Promise<SnapshotRecord> {
    if (!ref.includes('/')) return this.resolve(ref);
    return this.ctx.stores.snapshots.pulledAs(formatReference(parseReference(ref))) ?? this.pull(ref);
  }

  /** N new running VMs, each on its own overlay, all mapping the snapshot's RAM copy-on-write. */
  async fork(snapshotRef: string, opts: ForkOptions = {}): Promise<VmRecord[]> {
    const snapshot = await this.resolveOrPull(snapshotRef);
    const count = opts.count ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > MAX_FORKS) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--count ${count} is out of range: 1 to ${MAX_FORKS}`);
    }
    const prefix = opts.namePrefix ?? snapshot.name;
    const names =
      opts.name !== undefined && count === 1
        ? [opts.name]
        : opts.namePrefix !== undefined || count > 1
          ? this.vms.numberedNames(prefix, count)
          : [this.vms.freshName()];
    for (const n of names) {
      validateName(n);
      this.vms.assertNameFree(n);
    }
    assertCompatible(snapshot.compat, compatKey(this.ctx, await this.ctx.host.ensure()), snapshot.name);
    const created: { vm: VmRecord; spare: Spare | undefined }[] = [];
    for (const name of names) {
      // A spare (restored, paused) saves QEMU's start and the state load; private-RAM forks need their own.
      const spare = opts.copyMemory ? undefined : await this.spares.take(snapshot.id);
      try {
        created.push({ vm: await this.createForkRecord(snapshot, name, opts.overrides ?? {}, opts.labels, spare?.id, opts.ephemeral), spare });
      } catch (err) {
        if (spare) await this.spares.discard(spare);
        await Promise.all(created.map(({ vm }) => this.vms.remove(vm.id, true).catch(() => {})));
        throw err;
      }
    }
    await this.ctx.checkpoint('fork:recorded');
    const results = await Promise.allSettled(
      created.map(({ vm, spare }) =>
        this.vms.withLock(vm.id, () =>
          this.vms.boot(vm.id, {
            snapshot,
            copyMemory: opts.copyMemory,
            spare,
            identity: { hostname: guestHostname(vm.name, vm.id), machineId: randomBytes(16).toString('hex') },
          }),
        ),
      ),
    );
    if (!opts.copyMemory) this.spares.replenish(snapshot);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // All or nothing: a fork that failed must not leave its siblings behind.
      await Promise.all(created.map(({ vm }) => this.vms.remove(vm.id, true).catch(() => {})));
      throw failed.reason;
    }
    return results.map((r) => (r as PromiseFulfilledResult<VmRecord>).value);
  }

  /**
   * A snapshot of the same machine with different defaults for the VMs forked from it (env,
   * working directory, user): what a build's trailing `env` or `workdir` steps leave. Nothing
   * boots; the new snapshot's files are hard links to the source's (they never change), and it
   * counts as the source's child, so the source stays while it exists. `cache` is recorded with it.
   */
  async derive(
    sourceRef: string,
    changes: Partial<Pick<VmRecord['spec'], 'env' | 'workingDir' | 'user' | 'ports' | 'health'>>,
    name?: string,
    cache?: PendingCacheEntry,
  ): Promise<SnapshotRecord> {
    const source = this.resolve(sourceRef);
    if (name !== undefined) validateName(name);
    return this.ctx.locks.run(source.id, async () => {
      const { paths, stores } = this.ctx;
      const id = newId();
      const finalName = name ?? `${source.name}-${randomBytes(2).toString('hex')}`;
      if (stores.snapshots.nameExists(finalName)) throw new CellError(ErrorCodes.CONFLICT, `the name "${finalName}" is already in use by another snapshot`);
      const staging = stagingDir(this.ctx, id);
      await mkdir(staging, { recursive: true });
      try {
        for (const file of ['state', 'memory', 'disk.qcow2', 'data.qcow2']) {
          const from = join(paths.snapshotDir(source.id), file);
          if (file !== 'data.qcow2' || existsSync(from)) await link(from, join(staging, file));
        }
        await rename(staging, paths.snapshotDir(id));
        await this.ctx.checkpoint('derive:published');
      } catch (err) {
        await rm(staging, { recursive: true, force: true });
        throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `could not derive a snapshot from ${source.name}: ${(err as Error).message}`);
      }
      const record: SnapshotRecord = {
        ...source,
        id,
        name: finalName,
        parentSnapshot: source.id,
        spec: { ...source.spec, ...changes },
        // The files are shared: they take no new space.
        stateBytes: 0,
        memoryBytes: 0,
        diskBytes: 0,
        createdAt: new Date().toISOString(),
      };
      this.ctx.db.transaction(() => {
        stores.snapshots.insert(record);
        this.images.pin('snapshot', id, record.spec.imageDigest);
        if (cache) stores.actionCache.put(cacheEntryFor(cache, id, record.createdAt), cache.replace);
      })();
      return record;
    });
  }

  /**
   * Gives a snapshot the name `name` (a build's tag). A snapshot already called that loses the
   * name (it becomes `snap-<short id>`), like a Docker tag moving to a new image.
   */
  tag(ref: string, name: string): SnapshotRecord {
    validateName(name);
    const snapshot = this.resolve(ref);
    if (snapshot.name === name) return snapshot;
    const store = this.ctx.stores.snapshots;
    this.ctx.db.transaction(() => {
      const holder = store.list().find((s) => s.name === name);
      if (holder) store.rename(holder.id, `snap-${holder.id.slice(0, 12)}`);
      store.rename(snapshot.id, name);
    })();
    return store.get(snapshot.id)!;
  }

  /** Rolls a VM back to a snapshot of its own lineage (its memory, devices and disk). */
  restore(vmRef: string, snapshotRef: string): Promise<VmRecord> {
    const vm = this.vms.resolve(vmRef);
    const snapshot = this.resolve(snapshotRef);
    if (!this.inLineage(vm, snapshot)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `snapshot ${snapshot.name} is not of VM ${vm.name}'s lineage: fork it instead`);
    }
    return this.vms.withLock(vm.id, async () => {
      assertCompatible(snapshot.compat, compatKey(this.ctx, await this.ctx.host.ensure()), snapshot.name);
      // From here a crash is finished by the next celld (restore-intent.ts), never left half-way.
      const dir = this.ctx.paths.vmDir(vm.id);
      await markRestoring(dir, snapshot.id);
      try {
        await this.vms.halt(vm.id);
        await this.ctx.checkpoint('restore:halted');
        return await this.vms.boot(vm.id, { snapshot, copyMemory: true });
      } finally {
        await clearRestoring(dir);
      }
    });
  }

  /**
   * Removes a snapshot. A snapshot that VMs or later snapshots stand on (their disks are overlays
   * on its layer) is refused unless `force`, and even then no VM is touched: it is retired (gone
   * from lists, its name free) and its files stay until the last of them is removed. `force` also
   * drops the cache entries that hold it; template revisions holding it are refused without it.
   */
  remove(ref: string, force = false): Promise<void> {
    const snapshot = this.resolve(ref);
    return this.ctx.locks.run(snapshot.id, async () => {
      const { stores } = this.ctx;
      const children = stores.snapshots.children(snapshot.id).filter((c) => !stores.snapshots.isRetired(c.id));
      const dependents = stores.vms.onSnapshot(snapshot.id);
      const users = [...dependents.map((v) => `VM ${v.name}`), ...children.map((c) => `snapshot ${c.name}`)];
      if (users.length > 0 && !force) {
        throw new CellError(
          ErrorCodes.CONFLICT,
          `snapshot ${snapshot.name} is in use by ${users.join(', ')}: remove them first, or use --force to remove it from the list now (its files go with the last of them; no VM is removed)`,
        );
      }
      const holders = this.holders(snapshot.id);
      if (holders.length > 0 && !force) {
        throw new CellError(
          ErrorCodes.CONFLICT,
          `snapshot ${snapshot.name} is held by ${holders.join(', ')}: remove those first (cell cache prune, cell template rm) or use --force`,
        );
      }
      await this.spares.drop(snapshot.id);
      const standsOn = stores.vms.onSnapshot(snapshot.id).length > 0 || stores.snapshots.children(snapshot.id).length > 0;
      this.ctx.db.transaction(() => {
        stores.actionCache.deleteForSnapshot(snapshot.id);
        if (standsOn) stores.snapshots.retire(snapshot.id, new Date().toISOString());
        else {
          stores.snapshots.delete(snapshot.id);
          this.images.unpin('snapshot', snapshot.id);
        }
      })();
      if (!standsOn) await rm(this.ctx.paths.snapshotDir(snapshot.id), { recursive: true, force: true });
      // Its parent may have been retired and waiting for this one.
      await collectRetiredSnapshots(this.ctx, (id) => this.images.unpin('snapshot', id));
    });
  }

  /** Writes the snapshot to one archive file another host can import. */
  export(ref: string, file: string, host: HostFs = CELLD_HOST_FS): Promise<{ bytes: number }> {
    const snapshot = this.resolve(ref);
    return this.ctx.locks.run(snapshot.id, () => exportSnapshot(this.ctx.paths, snapshot, file, host));
  }

  /** Sends the snapshot to a registry as an OCI artifact (engine/snapshot-registry.ts). */
  push(ref: string, reference: string, opts: { insecureRegistries?: string[]; onProgress?: TransferProgress; untagged?: boolean } = {}): Promise<PushResult> {
    const snapshot = this.resolve(ref);
    return this.ctx.locks.run(snapshot.id, () =>
      pushSnapshot(this.ctx, snapshot, reference, this.images.registryAccess(opts.insecureRegistries), opts.onProgress, { untagged: opts.untagged }),
    );
  }

  /** Fetches a snapshot pushed with `push`, refused before its RAM is fetched if this host cannot restore it. */
  async pull(
    reference: string,
    opts: { name?: string; insecureRegistries?: string[]; onProgress?: TransferProgress; onTransfer?: (summary: PullTransfer) => void } = {},
  ): Promise<SnapshotRecord> {
    if (opts.name !== undefined) validateName(opts.name);
    const ready = await this.ctx.host.ensure();
    return pullSnapshot(this.ctx, reference, compatKey(this.ctx, ready), this.images.registryAccess(opts.insecureRegistries), opts.name, opts.onProgress, opts.onTransfer);
  }

  /** Reads an archive at `file` with `host`'s access (the caller's: engine/host-fs.ts). */
  import(file: string, name?: string, host: HostFs = CELLD_HOST_FS): Promise<SnapshotRecord> {
    if (name !== undefined) validateName(name);
    return importSnapshot(this.ctx, file, name, host);
  }

  /**
   * Removes the oldest snapshots nothing depends on (no VM on their layer, no snapshot on top, no
   * cache entry or template holding them)
   * until at most `maxCount` remain and they hold at most `maxBytes`. Returns what was removed.
   */
  async prune(opts: { maxCount?: number; maxBytes?: number }): Promise<SnapshotRecord[]> {
    const removed: SnapshotRecord[] = [];
    const size = (s: SnapshotRecord) => s.stateBytes + s.memoryBytes + s.diskBytes;
    for (;;) {
      const all = this.ctx.stores.snapshots.list();
      const total = all.reduce((sum, s) => sum + size(s), 0);
      const over = (opts.maxCount !== undefined && all.length > opts.maxCount) || (opts.maxBytes !== undefined && total > opts.maxBytes);
      if (!over) return removed;
      const victim = all.find((s) => this.removable(s.id));
      if (!victim) return removed;
      await this.remove(victim.id);
      removed.push(victim);
    }
  }

  /**
   * Nothing needs it: no VM on its layer, no snapshot on top, no cache entry or template holding
   * it (but the cache entry `exceptKey`, which is about to go with it).
   */
  removable(id: string, exceptKey?: string): boolean {
    const { stores } = this.ctx;
    return stores.vms.onSnapshot(id).length === 0 && stores.snapshots.children(id).length === 0 && this.holders(id, exceptKey).length === 0;
  }

  /** Records that keep a snapshot on purpose: action-cache entries (but `exceptKey`) and template revisions. */
  holders(id: string, exceptKey?: string): string[] {
    const cache = this.ctx.stores.actionCache
      .bySnapshot(id)
      .filter((e) => e.key !== exceptKey)
      .map((e) => `cache entry ${e.key.slice(0, 12)}`);
    const templates = [...new Set(this.ctx.stores.templates.holding(id).map((r) => `template ${r.templateName}`))];
    return [...cache, ...templates];
  }

  /** Whether `snapshot` was taken from this VM or from one of the snapshots it descends from. */
  private inLineage(vm: VmRecord, snapshot: SnapshotRecord): boolean {
    if (snapshot.parentVm === vm.id) return true;
    for (let id = vm.baseSnapshot; id; id = this.ctx.stores.snapshots.getAny(id)?.parentSnapshot ?? null) {
      if (id === snapshot.id) return true;
    }
    return false;
  }

  private createForkRecord(snapshot: SnapshotRecord, name: string, overrides: ForkOptions['overrides'] & object, added: Labels | undefined, id?: string, ephemeral = false): Promise<VmRecord> {
    const ports = forkPorts(snapshot.spec.ports);
    const labels = mergeLabels(snapshot.spec.labels, added);
    const spec = { ...snapshot.spec, cmd: [], timeoutSec: 0, autoRemove: false, ...(ports ? { ports } : {}), ...overrides, ...labelsOf(labels) };
    if (overrides.ports && !spec.networks?.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `snapshot ${snapshot.name} has no network: its forks cannot publish ports`);
    return this.vms.record(name, spec, snapshot.id, id, { ephemeral });
  }
}

/** A spec's `labels` field for a merged set (a merge keeps the source's, so it only ever adds). */
const labelsOf = (labels: Labels | undefined) => (labels ? { labels } : {});
