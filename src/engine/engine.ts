import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId, randomName, resolveRef, validateName } from '../domain/ids.js';
import { effectiveCommand } from '../domain/image.js';
import type { CellPaths } from '../domain/paths.js';
import type { CellConfig } from '../domain/config.js';
import {
  DEFAULT_CPUS,
  DEFAULT_MEMORY_MIB,
  mergeEnv,
  newVmRecord,
  validateEnv,
  validateResources,
  type VmRecord,
  type VmSpec,
} from '../domain/vm.js';
import { openDatabase, type Db } from '../store/database.js';
import { ImageStore } from '../store/image-store.js';
import { VmStore } from '../store/vm-store.js';
import { QemuBackend } from '../vmm/qemu/backend.js';
import { MAX_DATA_DISK_MIB } from '../host/empty-ext4.js';
import { copySparse } from '../host/files.js';
import { runGuestCommand, parseUser } from './exec-runner.js';
import { HostReadiness, type HostReady, type ProgressListener } from './host-readiness.js';
import { assertCompatible, type CompatKey, type SnapshotRecord } from '../domain/snapshot.js';
import { MACHINE_TYPE } from '../vmm/qemu/argv.js';
import { SnapshotStore } from '../store/snapshot-store.js';
import { Snapshots } from './snapshots.js';
import { Actions } from './actions.js';
import { Builds } from './builds.js';
import { Templates } from './templates.js';
import { SparePool, type Spare } from './spare-pool.js';
import { Runs } from './runs.js';
import { machineSpecFor, prepareSpare } from './machine-spec.js';
import { loadConfig, reconcile, sweepOrphans } from './recovery.js';
import { TemplateStore } from '../store/template-store.js';
import { ActionCacheStore } from '../store/action-cache-store.js';
import { Images } from './images.js';
import { resolveImageUser } from '../image/image-users.js';
import { exitInfo } from './vm-records.js';
import { LiveMachines, type GuestIdentity, type PreparedRestore } from './live-machines.js';
import { NULL_SINK, type ExecOptions, type ExecResult, type OutputSink } from './output.js';
import { VmLogs, type LogEntry } from './vm-logs.js';
import type { AgentClient } from '../agent/client.js';
import type { GuestStat, PutFileMeta } from '../agent/file-frames.js';
import { copyIn, copyOut, type CopyResult } from './cp-targets.js';
import type { Owner } from './guest-files.js';

export interface CreateVmRequest {
  image?: string;
  name?: string;
  cpus?: number;
  memoryMib?: number;
  cmd?: string[];
  env?: string[];
  workingDir?: string;
  user?: string;
  timeoutSec?: number;
  autoRemove?: boolean;
  /** An empty ext4 disk of this many MiB at /data. */
  dataDiskMib?: number;
}

export interface RunRequest extends CreateVmRequest {
  detach?: boolean;
  /** Fork this snapshot instead of booting the image (`image` is then ignored). */
  fromSnapshot?: string;
  /** Start from this template (`NAME` or `NAME:ROLE`): warm when it has a snapshot, else cold. */
  template?: string;
}

export interface RestoreRequest {
  snapshot: SnapshotRecord;
  /** A fork's new identity; a VM rolled back keeps its own (undefined). */
  identity?: GuestIdentity;
  /**
   * Give the VM its own writable copy of the snapshot's RAM instead of mapping it copy-on-write:
   * costs a copy of the touched pages, but a snapshot of the VM is then a file copy, not a full
   * RAM save (what build steps want: each one is snapshotted).
   */
  copyMemory?: boolean;
  /** A spare of the snapshot, restored and paused, made for this VM's id: only resume it. */
  spare?: Spare;
}

export interface RunEvents {
  /** The VM record exists (id and name known). */
  onCreated?(vm: VmRecord): void;
  /** The guest agent answered: the command is about to start. */
  onRunning?(vm: VmRecord): void;
}

export interface EngineInfo {
  home: string;
  cacheDir: string;
  accelerator: string;
  acceleratorReason: string;
  qemuVersion: string;
  guestKernel: string;
  vms: Record<string, number>;
  images: number;
  /** Restored, paused QEMUs waiting to become forks (see spare-pool.ts). */
  spares: number;
  /** config.json / CELL_IMAGE_CACHE_MAX_BYTES; null = no cap. */
  imageCacheMaxBytes: number | null;
}


/** The runtime: the one place that combines the store, the host assets, the VMM and the agent. */
export class Engine {
  readonly vms: VmStore;
  readonly imageStore: ImageStore;
  readonly images: Images;
  readonly logs: VmLogs;
  readonly host: HostReadiness;
  readonly snapshotStore: SnapshotStore;
  readonly snapshots: Snapshots;
  readonly actionCache: ActionCacheStore;
  readonly actions: Actions;
  readonly builds: Builds;
  readonly templateStore: TemplateStore;
  readonly templates: Templates;
  readonly spares: SparePool;
  /** @internal */
  readonly runs: Runs;
  /** @internal */
  readonly backend = new QemuBackend();
  /** @internal */
  readonly live: LiveMachines;
  private readonly locks = new Map<string, Promise<unknown>>();

  private constructor(
    readonly paths: CellPaths,
    /** @internal */
    readonly db: Db,
    readonly config: CellConfig,
  ) {
    this.vms = new VmStore(db);
    this.imageStore = new ImageStore(db);
    this.images = new Images(this);
    this.snapshotStore = new SnapshotStore(db);
    this.snapshots = new Snapshots(this);
    this.actionCache = new ActionCacheStore(db);
    this.actions = new Actions(this);
    this.builds = new Builds(this);
    this.templateStore = new TemplateStore(db);
    this.templates = new Templates(this);
    this.spares = new SparePool(this);
    this.runs = new Runs(this);
    this.logs = new VmLogs((id) => this.vmDir(id));
    this.host = new HostReadiness(paths.cache, this.imageStore);
    this.live = new LiveMachines(this.backend, (id, expected) => this.onMachineGone(id, expected));
  }

  static async open(paths: CellPaths): Promise<Engine> {
    await mkdir(paths.vms, { recursive: true });
    await mkdir(paths.memory, { recursive: true });
    await mkdir(paths.snapshots, { recursive: true });
    const engine = new Engine(paths, openDatabase(paths.db), await loadConfig(paths.config));
    await reconcile(engine);
    await sweepOrphans(engine);
    return engine;
  }

  vmDir(id: string): string {
    return join(this.paths.vms, id);
  }

  /** Where a spare (spare-pool.ts) waits until a fork takes it. */
  spareDir(id: string): string {
    return join(this.paths.home, 'spares', id);
  }

  /**
   * A running VM's RAM file, MAP_SHARED so a snapshot can take it as it is. It lives on tmpfs:
   * on ext4 the guest's page faults cost block allocation (measured: boot 2.9 s against 2.2 s).
   * Sparse, so it holds only the pages the guest touched; deleted when the VM stops.
   */
  memoryPath(id: string): string {
    return join(this.paths.memory, `${id}.mem`);
  }

  setup(onProgress?: ProgressListener, reprobe = false) {
    return this.host.ensure(onProgress, { reprobe });
  }

  async info(): Promise<EngineInfo> {
    const ready = await this.host.ensure();
    return {
      home: this.paths.home,
      cacheDir: this.paths.cache,
      accelerator: ready.accelerator.accelerator,
      acceleratorReason: ready.accelerator.reason,
      qemuVersion: ready.qemuVersion,
      guestKernel: ready.assets.kernel.release,
      vms: this.vms.countByState(),
      images: this.imageStore.list().length,
      spares: this.spares.count(),
      imageCacheMaxBytes: this.config.imageCacheMaxBytes ?? null,
    };
  }

  list(all = false): VmRecord[] {
    const vms = this.vms.list();
    return all ? vms : vms.filter((vm) => vm.state !== 'stopped' && vm.state !== 'created');
  }

  resolve(ref: string): VmRecord {
    return resolveRef('VM', ref, this.vms.list());
  }

  /** Validates everything and records a VM in state `created`; nothing boots yet. */
  async create(req: CreateVmRequest): Promise<VmRecord> {
    const cpus = req.cpus ?? DEFAULT_CPUS;
    const memoryMib = req.memoryMib ?? DEFAULT_MEMORY_MIB;
    validateResources(cpus, memoryMib);
    validateEnv(req.env ?? []);
    if (req.timeoutSec !== undefined && (!Number.isFinite(req.timeoutSec) || req.timeoutSec < 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--timeout ${req.timeoutSec} must be a number of seconds >= 0`);
    }
    if (req.name !== undefined) validateName(req.name);
    if (req.dataDiskMib !== undefined && (!Number.isInteger(req.dataDiskMib) || req.dataDiskMib < 1 || req.dataDiskMib > MAX_DATA_DISK_MIB)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--data-disk ${req.dataDiskMib} is out of range: give MiB from 1 to ${MAX_DATA_DISK_MIB}`);
    }
    await this.host.ensure();
    if (!req.image) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'an image is required (for example: busybox)');
    const image = await this.images.ensure(req.image);
    const user = await resolveImageUser(image.diskPath, req.user || image.config.User || 'root');
    const name = req.name ?? this.freshName();
    if (this.vms.nameExists(name)) throw new CellError(ErrorCodes.CONFLICT, `the name "${name}" is already in use by another VM`);
    const vm = await this.recordNewVm(name, {
      image: image.reference,
      imageDigest: image.digest,
      cpus,
      memoryMib,
      cmd: effectiveCommand(image.config, req.cmd ?? []),
      env: mergeEnv(image.config.Env ?? [], req.env ?? []),
      workingDir: req.workingDir || image.config.WorkingDir || '/',
      user,
      timeoutSec: req.timeoutSec ?? 0,
      autoRemove: req.autoRemove ?? false,
      ...(req.dataDiskMib ? { dataDiskMib: req.dataDiskMib } : {}),
    });
    this.imageStore.touch(image.reference, vm.createdAt);
    return vm;
  }

  /**
   * Records a new VM in state `created` (with its directory, and a pin on its image's blobs).
   * @internal
   */
  async recordNewVm(name: string, spec: VmSpec, baseSnapshot: string | null = null, id: string = newId()): Promise<VmRecord> {
    const vm = newVmRecord(id, name, spec, baseSnapshot);
    await mkdir(this.vmDir(vm.id), { recursive: true });
    this.db.transaction(() => {
      this.vms.insert(vm);
      this.images.pin('vm', vm.id, spec.imageDigest);
    })();
    return vm;
  }

  /** A spare for the pool: a fork of `snapshot` restored up to its first instruction, as VM `id` will be. @internal */
  prepareSpare(id: string, snapshot: SnapshotRecord): Promise<PreparedRestore> {
    return prepareSpare(this, id, snapshot);
  }

  /** Boots a created or stopped VM and waits for its agent. The disk is kept across starts. */
  start(ref: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, () => this.bootLocked(vm.id));
  }

  /**
   * Boots VM `id` (lock held). With `restore`, the VM comes back from the snapshot instead: a fresh
   * overlay on the snapshot's disk layer, its RAM file mapped copy-on-write, its saved state loaded.
   * @internal
   */
  async bootLocked(id: string, restore?: RestoreRequest): Promise<VmRecord> {
    const vm = this.vms.get(id)!;
    if (vm.state === 'running' || vm.state === 'starting') {
      throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} is already ${vm.state}`);
    }
    const ready = await this.host.ensure();
    // A VM on a snapshot's layer needs no image here (an imported snapshot's image may be absent).
    const image = vm.baseSnapshot || restore ? undefined : this.images.require(vm.spec.image);
    this.vms.update(id, { state: 'starting', exit: null, pid: null, accelerator: ready.accelerator.accelerator });
    const snapshotDir = restore ? this.snapshotDir(restore.snapshot.id) : undefined;
    try {
      if (restore && snapshotDir) {
        assertCompatible(restore.snapshot.compat, this.compatKey(ready), restore.snapshot.name);
        // A spare made its overlays already; anything else starts on fresh ones.
        if (!restore.spare) {
          await rm(join(this.vmDir(id), 'disk.qcow2'), { force: true });
          await rm(join(this.vmDir(id), 'data.qcow2'), { force: true });
        }
        this.vms.update(id, { baseSnapshot: restore.snapshot.id });
        if (restore.copyMemory) await copySparse(join(snapshotDir, 'memory'), this.memoryPath(id));
      }
      const current = this.vms.get(id)!;
      await this.live.boot(
        await machineSpecFor(this, current, ready, image, restore),
        (pid) => this.vms.update(id, { pid }),
        restore && snapshotDir ? { statePath: join(snapshotDir, 'state'), identity: restore.identity, prepared: restore.spare?.prepared } : undefined,
      );
    } catch (err) {
      this.releaseMemory(id);
      this.vms.update(id, { state: 'stopped', stoppedAt: new Date().toISOString(), pid: null, exit: exitInfo('boot_failed') });
      throw err;
    }
    return this.vms.update(id, { state: 'running', startedAt: new Date().toISOString() });
  }

  /**
   * `cell run`: create (or fork, or start from a template), boot, run the main command (runs.ts).
   */
  run(req: RunRequest, sink: OutputSink = NULL_SINK, events: RunEvents = {}, signal?: AbortSignal): Promise<{ vm: VmRecord; result?: ExecResult }> {
    return this.runs.run(req, sink, events, signal);
  }

  /** `cell exec`: a command in a running VM, with the VM's env under the caller's. */
  async exec(ref: string, opts: ExecOptions, sink: OutputSink): Promise<ExecResult> {
    const vm = this.resolve(ref);
    if (vm.state !== 'running') throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${vm.state})`);
    validateEnv(opts.env ?? []);
    const live = this.live.require(vm.id);
    const { uid, gid } = parseUser(opts.user ?? vm.spec.user);
    return runGuestCommand(
      live.agent,
      {
        argv: opts.cmd,
        env: mergeEnv(vm.spec.env, opts.env ?? []),
        cwd: opts.workingDir || vm.spec.workingDir,
        uid,
        gid,
        timeoutSec: opts.timeoutSec ?? 0,
        stdin: opts.stdin,
        signal: opts.signal,
      },
      sink,
    );
  }

  /** `cell cp HOST VM:PATH`: a host file or directory into a running VM (docker cp's rules, cp-targets.ts). */
  copyIn(ref: string, hostPath: string, guestPath: string): Promise<CopyResult> {
    return copyIn(this.runningAgent(ref), hostPath, guestPath);
  }

  /** `cell cp VM:PATH HOST`: a file or directory of a running VM onto the host, owned by `owner` when given. */
  copyOut(ref: string, guestPath: string, hostPath: string, owner?: Owner): Promise<CopyResult> {
    return copyOut(this.runningAgent(ref), guestPath, hostPath, owner);
  }

  statGuestPath(ref: string, path: string, follow = false): Promise<GuestStat> {
    return this.runningAgent(ref).stat(path, { follow });
  }

  /** A regular file of a running VM, streamed; leaving the loop early cancels the read. */
  readGuestFile(ref: string, path: string, maxBytes = 0): AsyncGenerator<Buffer> {
    return this.runningAgent(ref).readFile(path, { maxBytes });
  }

  /** Creates or atomically replaces a file in a running VM; resolves with its size. */
  writeGuestFile(ref: string, path: string, meta: PutFileMeta, source: AsyncIterable<Buffer>): Promise<number> {
    return this.runningAgent(ref).putFile(path, meta, source);
  }

  /** The agent of a running VM, for file operations. */
  private runningAgent(ref: string): AgentClient {
    const vm = this.resolve(ref);
    if (vm.state !== 'running') throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${vm.state})`);
    return this.live.require(vm.id).agent;
  }

  stop(ref: string, graceSec = 10): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.vms.get(vm.id)!;
      if (current.state === 'stopped' || current.state === 'created') return current;
      this.vms.update(vm.id, { state: 'stopping' });
      await this.live.stop(vm.id, graceSec);
      const after = this.vms.get(vm.id)!;
      const stopped = this.vms.update(vm.id, {
        state: 'stopped',
        stoppedAt: new Date().toISOString(),
        pid: null,
        exit: after.exit ?? exitInfo('stopped'),
      });
      // Followers (`cell logs -f`) wake up, see the VM stopped and end.
      this.logs.end(vm.id);
      return stopped;
    });
  }

  /** Removes a VM and its disk. A running VM needs `force` (then it is killed, no grace). */
  remove(ref: string, force = false): Promise<void> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.vms.get(vm.id);
      if (!current) return;
      if (current.state !== 'stopped' && current.state !== 'created') {
        if (!force) throw new CellError(ErrorCodes.CONFLICT, `VM ${current.name} is ${current.state}: stop it first or use --force`);
        this.vms.update(vm.id, { state: 'stopping' });
        await this.live.kill(vm.id);
        if (current.pid) await this.backend.kill(current.pid, vm.id);
      }
      this.releaseMemory(vm.id);
      this.db.transaction(() => {
        this.vms.delete(vm.id);
        this.images.unpin('vm', vm.id);
      })();
      this.logs.end(vm.id);
      await rm(this.vmDir(vm.id), { recursive: true, force: true });
    });
  }

  /** The main command's output; with `follow`, keeps going until the VM stops or `signal` aborts. */
  async *readLogs(ref: string, follow: boolean, signal?: AbortSignal): AsyncGenerator<LogEntry> {
    const vm = this.resolve(ref);
    let wake: (() => void) | null = null;
    const poke = () => wake?.();
    this.logs.on(`entry:${vm.id}`, poke);
    this.logs.on(`end:${vm.id}`, poke);
    signal?.addEventListener('abort', poke);
    try {
      let offset = 0;
      for (;;) {
        // Arm the wake-up before reading so an entry written meanwhile is not slept through.
        const woken = new Promise<void>((resolve) => (wake = resolve));
        const batch = await this.logs.readFrom(vm.id, offset);
        offset = batch.offset;
        yield* batch.entries;
        const state = this.vms.get(vm.id)?.state;
        if (!follow || signal?.aborted || !state || state === 'stopped' || state === 'created') return;
        await woken;
      }
    } finally {
      this.logs.off(`entry:${vm.id}`, poke);
      this.logs.off(`end:${vm.id}`, poke);
      signal?.removeEventListener('abort', poke);
    }
  }

  async close(): Promise<void> {
    await this.spares.closeAll();
    this.live.detachAll();
    await Promise.allSettled([...this.locks.values()]);
    this.db.close();
  }

  snapshotDir(id: string): string {
    return join(this.paths.snapshots, id);
  }

  /** What a snapshot taken here depends on; restoring elsewhere checks it first. */
  compatKey(ready: HostReady): CompatKey {
    return {
      qemuVersion: ready.qemuVersion,
      machine: MACHINE_TYPE,
      cpuModel: ready.accelerator.accelerator === 'kvm' ? 'host' : 'qemu64',
      accelerator: ready.accelerator.accelerator,
      kernelDigest: ready.assets.kernel.digest,
      initramfsDigest: ready.assets.initramfs.digest,
    };
  }

  /** A stopped VM's RAM is gone for good: free the tmpfs it held. */
  /** @internal */
  releaseMemory(id: string): void {
    rmSync(this.memoryPath(id), { force: true });
  }

  /** `name`, or `name-<hex>` when a VM has it already (the VMs of actions and templates). @internal */
  availableName(name: string): string {
    return this.vms.nameExists(name) ? `${name}-${randomBytes(2).toString('hex')}` : name;
  }

  /** @internal */
  freshName(): string {
    for (;;) {
      const name = randomName();
      if (!this.vms.nameExists(name)) return name;
    }
  }

  /** Serialises operations on one VM or snapshot. @internal */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve();
    const next = previous.catch(() => {}).then(fn);
    this.locks.set(id, next);
    const cleanup = () => {
      if (this.locks.get(id) === next) this.locks.delete(id);
    };
    next.then(cleanup, cleanup);
    return next;
  }

  private onMachineGone(id: string, expected: boolean): void {
    this.releaseMemory(id);
    if (expected) return;
    const vm = this.vms.get(id);
    if (vm && (vm.state === 'running' || vm.state === 'starting')) {
      this.vms.update(id, { state: 'stopped', stoppedAt: new Date().toISOString(), pid: null, exit: vm.exit ?? exitInfo('crashed') });
    }
    this.logs.end(id);
  }
}
