import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { link, mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId, resolveRef, validateName } from '../domain/ids.js';
import { assertCompatible, type SnapshotRecord } from '../domain/snapshot.js';
import type { VmRecord } from '../domain/vm.js';
import { copySparse } from '../host/files.js';
import { saveState } from '../vmm/qemu/migration.js';
import type { Engine } from './engine.js';
import { exitInfo, guestHostname } from './vm-records.js';
import { convertToSharedMemory } from './memory-conversion.js';
import type { Spare } from './spare-pool.js';
import { exportSnapshot, importSnapshot } from './snapshot-archive.js';


export interface TakeSnapshotOptions {
  name?: string;
  /** Leave the VM stopped afterwards instead of resuming it. */
  stop?: boolean;
}

export interface ForkOptions {
  count?: number;
  /** Fork names are PREFIX-1, PREFIX-2, ...; default: the snapshot's name. */
  namePrefix?: string;
  /** The exact name of a single fork (`run --from --name`). */
  name?: string;
  /** Spec fields that differ from the snapshot's (`run --from`: the command, env, timeout, --rm). */
  overrides?: Partial<Pick<VmRecord['spec'], 'cmd' | 'env' | 'workingDir' | 'user' | 'timeoutSec' | 'autoRemove' | 'template'>>;
  /** Each fork gets a private writable copy of the RAM (see RestoreRequest.copyMemory). */
  copyMemory?: boolean;
}

export const MAX_FORKS = 64;

/**
 * Snapshots and forks. A snapshot is three files under snapshots/<id>/: `memory` (the guest's RAM,
 * mapped copy-on-write by every VM restored from it, so forks share its pages), `state` (device
 * state, tens of KiB) and `disk.qcow2` (the VM's disk layer, frozen). Once written they never
 * change.
 */
export class Snapshots {
  constructor(private readonly engine: Engine) {}

  list(): SnapshotRecord[] {
    return this.engine.snapshotStore.list();
  }

  resolve(ref: string): SnapshotRecord {
    return resolveRef('snapshot', ref, this.engine.snapshotStore.list());
  }

  /**
   * Pauses the VM, saves its RAM, device state and disk layer, and resumes it restored from the
   * new snapshot (so it too maps the frozen RAM copy-on-write and runs on a fresh overlay).
   */
  take(vmRef: string, opts: TakeSnapshotOptions = {}): Promise<SnapshotRecord> {
    const vm = this.engine.resolve(vmRef);
    if (opts.name !== undefined) validateName(opts.name);
    return this.engine.withLock(vm.id, async () => {
      const current = this.engine.vms.get(vm.id)!;
      if (current.state !== 'running') {
        throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state}): only a running VM can be snapshotted`);
      }
      const name = opts.name ?? `${vm.name}-snap-${randomBytes(2).toString('hex')}`;
      if (this.engine.snapshotStore.nameExists(name)) throw new CellError(ErrorCodes.CONFLICT, `the name "${name}" is already in use by another snapshot`);
      const ready = await this.engine.host.ensure();
      const id = newId();
      const staging = join(this.engine.paths.snapshots, `.tmp-${id}`);
      await mkdir(staging, { recursive: true });
      // What the guest's page cache holds must reach the disk layer being frozen: a VM that later
      // boots cold from it (start after --stop, a template's cold start) sees only the disk.
      await this.engine.live.require(vm.id).agent.sync().catch(() => {});
      const live = await this.engine.live.pause(vm.id);
      let quit = false;
      try {
        if (live.memoryShared) {
          // RAM is already a file: save only device state, then copy the (sparse) file while paused.
          await saveState(live.qmp, join(staging, 'state'), { ignoreShared: true });
          await copySparse(this.engine.memoryPath(vm.id), join(staging, 'memory'));
        } else {
          // RAM is a private copy-on-write mapping: save it whole, then turn it into a file.
          await saveState(live.qmp, join(staging, 'full-state'), { ignoreShared: false });
          await convertToSharedMemory(this.engine, current, staging);
        }
        await this.engine.live.quitPaused(vm.id);
        quit = true;
        await rename(join(this.engine.vmDir(vm.id), 'disk.qcow2'), join(staging, 'disk.qcow2'));
        const data = join(this.engine.vmDir(vm.id), 'data.qcow2');
        if (existsSync(data)) await rename(data, join(staging, 'data.qcow2'));
      } catch (err) {
        if (!quit) await this.engine.live.resume(vm.id).catch(() => {});
        await rm(staging, { recursive: true, force: true });
        throw err instanceof CellError ? err : new CellError(ErrorCodes.SNAPSHOT_FAILED, `snapshot of ${vm.name} failed: ${(err as Error).message}`);
      }

      const sizes = await Promise.all(['state', 'memory', 'disk.qcow2', 'data.qcow2'].map((f) => allocatedBytes(join(staging, f))));
      const record: SnapshotRecord = {
        id,
        name,
        parentVm: vm.id,
        parentVmName: vm.name,
        parentSnapshot: current.baseSnapshot,
        spec: current.spec,
        compat: this.engine.compatKey(ready),
        stateBytes: sizes[0]!,
        memoryBytes: sizes[1]!,
        diskBytes: sizes[2]! + sizes[3]!,
        createdAt: new Date().toISOString(),
      };
      await rename(staging, this.engine.snapshotDir(id));
      this.engine.db.transaction(() => {
        this.engine.snapshotStore.insert(record);
        this.engine.images.pin('snapshot', id, record.spec.imageDigest);
      })();
      // From now on the VM's disk is an overlay on the frozen layer.
      this.engine.vms.update(vm.id, { baseSnapshot: id, state: 'stopped', pid: null, stoppedAt: new Date().toISOString(), exit: exitInfo('snapshot') });
      this.engine.releaseMemory(vm.id);
      // It continues on its own copy of the RAM it was saved with (not a copy-on-write mapping), so
      // its next snapshot is again a file copy (~0.2 s) rather than a full RAM save (~1.4 s here).
      if (!opts.stop) await this.engine.bootLocked(vm.id, { snapshot: record, copyMemory: true });
      return record;
    });
  }

  /** N new running VMs, each on its own overlay, all mapping the snapshot's RAM copy-on-write. */
  async fork(snapshotRef: string, opts: ForkOptions = {}): Promise<VmRecord[]> {
    const snapshot = this.resolve(snapshotRef);
    const count = opts.count ?? 1;
    if (!Number.isInteger(count) || count < 1 || count > MAX_FORKS) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--count ${count} is out of range: 1 to ${MAX_FORKS}`);
    }
    const prefix = opts.namePrefix ?? snapshot.name;
    const names =
      opts.name !== undefined && count === 1
        ? [opts.name]
        : Array.from({ length: count }, (_, i) => (opts.namePrefix !== undefined || count > 1 ? `${prefix}-${i + 1}` : this.engine.freshName()));
    for (const n of names) {
      validateName(n);
      if (this.engine.vms.nameExists(n)) throw new CellError(ErrorCodes.CONFLICT, `the name "${n}" is already in use by another VM`);
    }
    assertCompatible(snapshot.compat, this.engine.compatKey(await this.engine.host.ensure()), snapshot.name);
    const created: { vm: VmRecord; spare: Spare | undefined }[] = [];
    for (const name of names) {
      // A spare (restored, paused) saves QEMU's start and the state load; private-RAM forks need their own.
      const spare = opts.copyMemory ? undefined : await this.engine.spares.take(snapshot.id);
      try {
        created.push({ vm: await this.createForkRecord(snapshot, name, opts.overrides ?? {}, spare?.id), spare });
      } catch (err) {
        if (spare) await this.engine.spares.discard(spare);
        await Promise.all(created.map(({ vm }) => this.engine.remove(vm.id, true).catch(() => {})));
        throw err;
      }
    }
    const results = await Promise.allSettled(
      created.map(({ vm, spare }) =>
        this.engine.withLock(vm.id, () =>
          this.engine.bootLocked(vm.id, {
            snapshot,
            copyMemory: opts.copyMemory,
            spare,
            identity: { hostname: guestHostname(vm.name, vm.id), machineId: randomBytes(16).toString('hex') },
          }),
        ),
      ),
    );
    if (!opts.copyMemory) this.engine.spares.replenish(snapshot);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // All or nothing: a fork that failed must not leave its siblings behind.
      await Promise.all(created.map(({ vm }) => this.engine.remove(vm.id, true).catch(() => {})));
      throw failed.reason;
    }
    return results.map((r) => (r as PromiseFulfilledResult<VmRecord>).value);
  }

  /**
   * A snapshot of the same machine with different defaults for the VMs forked from it (env,
   * working directory, user): what a build's trailing `env` or `workdir` steps leave. Nothing
   * boots; the new snapshot's files are hard links to the source's (they never change), and it
   * counts as the source's child, so the source stays while it exists.
   */
  async derive(sourceRef: string, changes: Partial<Pick<VmRecord['spec'], 'env' | 'workingDir' | 'user'>>, name?: string): Promise<SnapshotRecord> {
    const source = this.resolve(sourceRef);
    if (name !== undefined) validateName(name);
    return this.engine.withLock(source.id, async () => {
      const id = newId();
      const finalName = name ?? `${source.name}-${randomBytes(2).toString('hex')}`;
      if (this.engine.snapshotStore.nameExists(finalName)) throw new CellError(ErrorCodes.CONFLICT, `the name "${finalName}" is already in use by another snapshot`);
      const staging = join(this.engine.paths.snapshots, `.tmp-${id}`);
      await mkdir(staging, { recursive: true });
      try {
        for (const file of ['state', 'memory', 'disk.qcow2', 'data.qcow2']) {
          const from = join(this.engine.snapshotDir(source.id), file);
          if (file !== 'data.qcow2' || existsSync(from)) await link(from, join(staging, file));
        }
        await rename(staging, this.engine.snapshotDir(id));
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
      this.engine.db.transaction(() => {
        this.engine.snapshotStore.insert(record);
        this.engine.images.pin('snapshot', id, record.spec.imageDigest);
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
    this.engine.db.transaction(() => {
      const holder = this.engine.snapshotStore.list().find((s) => s.name === name);
      if (holder) this.engine.snapshotStore.rename(holder.id, `snap-${holder.id.slice(0, 12)}`);
      this.engine.snapshotStore.rename(snapshot.id, name);
    })();
    return this.engine.snapshotStore.get(snapshot.id)!;
  }

  /** Rolls a VM back to a snapshot of its own lineage (its memory, devices and disk). */
  restore(vmRef: string, snapshotRef: string): Promise<VmRecord> {
    const vm = this.engine.resolve(vmRef);
    const snapshot = this.resolve(snapshotRef);
    if (!this.inLineage(vm, snapshot)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `snapshot ${snapshot.name} is not of VM ${vm.name}'s lineage: fork it instead`);
    }
    return this.engine.withLock(vm.id, async () => {
      assertCompatible(snapshot.compat, this.engine.compatKey(await this.engine.host.ensure()), snapshot.name);
      const current = this.engine.vms.get(vm.id)!;
      if (current.state !== 'stopped' && current.state !== 'created') {
        this.engine.vms.update(vm.id, { state: 'stopping' });
        await this.engine.live.kill(vm.id);
        this.engine.vms.update(vm.id, { state: 'stopped', pid: null });
      }
      return this.engine.bootLocked(vm.id, { snapshot, copyMemory: true });
    });
  }

  /**
   * Removes a snapshot. Refused while VMs run on its disk layer (unless `force`, which removes
   * them) or while snapshots taken from its descendants still chain through it.
   */
  remove(ref: string, force = false): Promise<void> {
    const snapshot = this.resolve(ref);
    return this.engine.withLock(snapshot.id, async () => {
      const children = this.engine.snapshotStore.children(snapshot.id);
      if (children.length > 0) {
        throw new CellError(
          ErrorCodes.CONFLICT,
          `snapshot ${snapshot.name} is the base of snapshots ${children.map((c) => c.name).join(', ')}: remove them first`,
        );
      }
      const dependents = this.engine.vms.onSnapshot(snapshot.id);
      if (dependents.length > 0 && !force) {
        throw new CellError(
          ErrorCodes.CONFLICT,
          `snapshot ${snapshot.name} is in use by VMs ${dependents.map((v) => v.name).join(', ')}: remove them or use --force`,
        );
      }
      const holders = this.holders(snapshot.id);
      if (holders.length > 0 && !force) {
        throw new CellError(
          ErrorCodes.CONFLICT,
          `snapshot ${snapshot.name} is held by ${holders.join(', ')}: remove those first (cell cache prune, cell template rm) or use --force`,
        );
      }
      for (const vm of dependents) await this.engine.remove(vm.id, true);
      await this.engine.spares.drop(snapshot.id);
      this.engine.db.transaction(() => {
        this.engine.actionCache.deleteForSnapshot(snapshot.id);
        this.engine.snapshotStore.delete(snapshot.id);
        this.engine.images.unpin('snapshot', snapshot.id);
      })();
      await rm(this.engine.snapshotDir(snapshot.id), { recursive: true, force: true });
    });
  }

  /** Writes the snapshot to one archive file another host can import. */
  export(ref: string, file: string): Promise<{ bytes: number }> {
    const snapshot = this.resolve(ref);
    return this.engine.withLock(snapshot.id, () => exportSnapshot(this.engine, snapshot, file));
  }

  import(file: string, name?: string): Promise<SnapshotRecord> {
    if (name !== undefined) validateName(name);
    return importSnapshot(this.engine, file, name);
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
      const all = this.engine.snapshotStore.list();
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
    return this.engine.vms.onSnapshot(id).length === 0 && this.engine.snapshotStore.children(id).length === 0 && this.holders(id, exceptKey).length === 0;
  }

  /** Records that keep a snapshot on purpose: action-cache entries (but `exceptKey`) and template revisions. */
  holders(id: string, exceptKey?: string): string[] {
    const cache = this.engine.actionCache
      .bySnapshot(id)
      .filter((e) => e.key !== exceptKey)
      .map((e) => `cache entry ${e.key.slice(0, 12)}`);
    const templates = [...new Set(this.engine.templateStore.holding(id).map((r) => `template ${r.templateName}`))];
    return [...cache, ...templates];
  }

  /** Whether `snapshot` was taken from this VM or from one of the snapshots it descends from. */
  private inLineage(vm: VmRecord, snapshot: SnapshotRecord): boolean {
    if (snapshot.parentVm === vm.id) return true;
    for (let id = vm.baseSnapshot; id; id = this.engine.snapshotStore.get(id)?.parentSnapshot ?? null) {
      if (id === snapshot.id) return true;
    }
    return false;
  }

  private createForkRecord(snapshot: SnapshotRecord, name: string, overrides: ForkOptions['overrides'] & object, id?: string): Promise<VmRecord> {
    return this.engine.recordNewVm(name, { ...snapshot.spec, cmd: [], timeoutSec: 0, autoRemove: false, ...overrides }, snapshot.id, id);
  }
}

/** Bytes a file really occupies (sparse RAM files are mostly holes). */
async function allocatedBytes(path: string): Promise<number> {
  try {
    const s = await stat(path);
    return Math.min(s.size, s.blocks * 512);
  } catch {
    return 0;
  }
}
