import { parseLabels } from '../domain/labels.js';
import { isLive } from '../domain/vm-state.js';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { GuestStat, PutFileMeta } from '../agent/file-frames.js';
import type { AgentClient } from '../agent/client.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId, randomName, resolveRef, validateName } from '../domain/ids.js';
import { effectiveCommand } from '../domain/image.js';
import { DEFAULT_NETWORK, parseNetworks, validatePorts, type PortRequest } from '../domain/network.js';
import { parseEgress } from '../domain/egress.js';
import { assertCompatible, type SnapshotRecord } from '../domain/snapshot.js';
import { DEFAULT_CPUS, DEFAULT_MEMORY_MIB, mergeEnv, newVmRecord, validateEnv, validateIoLimits, validateResources, type IoLimits, type VmRecord, type VmSpec } from '../domain/vm.js';
import { MAX_DATA_DISK_MIB } from '../host/empty-ext4.js';
import { copySparse } from '../host/files.js';
import { resolveImageUser } from '../image/image-users.js';
import { compatKey, type EngineContext } from './context.js';
import { copyIn, copyOut, type CopyResult } from './cp-targets.js';
import { CELLD_HOST_FS, hostPathError, type HostFs } from './host-fs.js';
import { parseUser, runGuestCommand } from './exec-runner.js';
import type { Owner } from './guest-files.js';
import type { Images } from './images.js';
import type { GuestIdentity } from './live-machines.js';
import { createMemoryFile, machineSpecFor, releaseMemory } from './machine-spec.js';
import { clearCreating, markHalfMade } from './half-made.js';
import { assertRamFits } from './ram-budget.js';
import { collectRetiredSnapshots, dropSavedMemory } from './retired-snapshots.js';
import type { ExecOptions, ExecResult, OutputSink } from './output.js';
import type { Spare } from './spare-pool.js';
import { VmLogs, type LogEntry } from './vm-logs.js';
import { LogTail } from '../domain/log-window.js';
import { initialHealth, validateHealthCheck, type HealthCheckRequest } from '../domain/health.js';
import { exitInfo } from './vm-records.js';
import { VmActivity } from './vm-activity.js';
import type { Volumes } from './volumes.js';
import { mountsBlockingSnapshot, parseMounts, type HostFolderMount, type MountRequest } from '../domain/volume.js';
import { applyTimeouts, ttlDeadline, type IdleAction, type TimeoutsRequest } from '../domain/timeouts.js';
import { EventRateLimit, oomAttributes, oomKill } from '../domain/oom.js';

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
  /** Disk and entropy rates the guest is held to. */
  limits?: IoLimits;
  /** Network names, its way out first (`default` when this host has networking); `['none']`: no NIC. */
  networks?: string[];
  /** Published ports (`-p`). */
  ports?: PortRequest[];
  /** `--egress` rules: `allow=...`, `deny=...`. */
  egress?: string[];
  /** `--label k=v` (domain/labels.ts). */
  labels?: string[];
  /** `--health-cmd` and friends. */
  health?: HealthCheckRequest;
  /**
   * `-v NAME:/path[:ro]` (domain/volume.ts); a volume that does not exist is made, as Docker does.
   * `-v /host/path:/path[:ro]` shares a host folder, reached with `hostFs`'s access.
   */
  volumes?: string[];
  /** The caller's access to host paths (host folders are resolved with it, and shared as that user). */
  hostFs?: HostFs;
  /** `--ttl`, `--idle-timeout`, `--idle-action` (domain/timeouts.ts). */
  ttlMs?: number;
  idleTimeoutMs?: number;
  idleAction?: IdleAction;
  /** A VM an engine operation makes and removes (an action's, a template build's): gone after a crash. */
  ephemeral?: boolean;
}

export interface LogReadOptions {
  follow?: boolean;
  since?: Date;
  until?: Date;
  /** Only the last this many lines of what is kept (then, with `follow`, what comes). */
  tail?: number;
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

/**
 * VMs: their records, boots, commands, files, logs, stop and removal. Every operation on one VM
 * holds its lock; every state change goes through VmStore.setState (the lifecycle table in
 * domain/vm-state.ts) before it is acted on.
 */
export class Vms {
  readonly logs: VmLogs;
  /** When each VM was last used, for `--idle-timeout` (engine/vm-timeouts.ts). */
  readonly activity = new VmActivity();
  /** Per running VM: how many `oom` events it may still record (a guest can report any number). */
  private readonly oomLimits = new Map<string, EventRateLimit>();

  constructor(
    private readonly ctx: EngineContext,
    private readonly images: Images,
    /** `cell volume` and the volumes VMs mount (volumes.ts). */
    readonly volumes: Volumes,
  ) {
    this.logs = new VmLogs((id) => ctx.paths.vmDir(id), { maxBytes: ctx.config.logMaxBytes });
  }

  list(all = false): VmRecord[] {
    const vms = this.ctx.stores.vms.list();
    return all ? vms : vms.filter((vm) => vm.state !== 'stopped' && vm.state !== 'created');
  }

  resolve(ref: string): VmRecord {
    return resolveRef('VM', ref, this.ctx.stores.vms.matching(ref));
  }

  get(id: string): VmRecord | undefined {
    return this.ctx.stores.vms.get(id);
  }

  /** `cell inspect`: the record, with what only its running machine's network can say. */
  async inspect(ref: string): Promise<VmRecord> {
    const found = this.resolve(ref);
    const deadline = isLive(found.state) ? ttlDeadline(found.spec.timeouts, found.startedAt) : undefined;
    const vm = deadline === undefined ? found : { ...found, expiresAt: new Date(deadline).toISOString() };
    if (!isLive(vm.state) || !vm.network) return vm;
    const dropped = await this.ctx.network.droppedPackets(vm.id).catch(() => null);
    return dropped === null ? vm : { ...vm, network: { ...vm.network, droppedPackets: dropped } };
  }

  /** Serialises operations on one VM. */
  withLock<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.ctx.locks.run(id, fn);
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
    const limits = validateIoLimits(req.limits);
    const networks = this.networksFor(req.networks, req.ports);
    const ports = req.ports?.length ? validatePorts(req.ports) : undefined;
    const egress = parseEgress(req.egress ?? []);
    const labels = parseLabels(req.labels);
    const health = req.health ? validateHealthCheck(req.health) : undefined;
    const timeouts = applyTimeouts(undefined, req);
    const mounts = req.volumes?.length ? parseMounts(req.volumes) : undefined;
    const volumes = mounts?.volumes.length ? mounts.volumes : undefined;
    if (mounts?.hostFolders.length && timeouts?.idleAction === 'pause-to-disk') throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--idle-action pause-to-disk cannot go with a host folder (-v /path:...): a VM with host folders cannot be paused to disk (docs/volumes.md)');
    if (egress && networks.length === 0) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'egress rules need a network: drop --network none or --egress');
    this.ctx.network.assertNetworks(networks, { egress: Boolean(egress) });
    await this.ctx.host.ensure();
    if (!req.image) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'an image is required (for example: busybox)');
    const image = await this.images.ensure(req.image);
    const user = await resolveImageUser(image.diskPath, req.user || image.config.User || 'root');
    const name = req.name ?? this.freshName();
    this.assertNameFree(name);
    const hostFolders = mounts?.hostFolders.length ? await resolveHostFolders(mounts.hostFolders, req.hostFs ?? CELLD_HOST_FS) : undefined;
    if (volumes) await this.volumes.ensure(volumes);
    const vm = await this.record(name, {
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
      ...(limits ? { limits } : {}),
      networks,
      ...(ports ? { ports } : {}),
      ...(egress ? { egress } : {}),
      ...(labels ? { labels } : {}),
      ...(health ? { health } : {}),
      ...(timeouts ? { timeouts } : {}),
      ...(volumes ? { volumes } : {}),
      ...(hostFolders ? { hostFolders } : {}),
    }, null, undefined, { ephemeral: req.ephemeral });
    this.ctx.stores.images.touch(image.reference, vm.createdAt);
    return vm;
  }

  /**
   * The network a new VM asks for: the default network when this host has networking, none
   * otherwise; an explicit `default` (or published ports) on a host without it is refused.
   */
  networksFor(asked: readonly string[] | undefined, ports: readonly PortRequest[] | undefined): string[] {
    const available = this.ctx.network.status.available;
    const networks = parseNetworks(asked) ?? (available ? [DEFAULT_NETWORK] : []);
    if (networks.length === 0 && ports?.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'published ports need a network: drop --network none or the -p flags');
    if (!available && (networks.length > 0 || ports?.length)) {
      throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `no networking on this host: ${this.ctx.network.status.reason}`);
    }
    return networks;
  }

  /**
   * `cell network connect NET VM`: the VM joins a network; a running one at once (its namespace
   * gets a link, its NIC stays as it is), a stopped one at its next start.
   */
  connect(ref: string, network: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.ctx.stores.vms.get(vm.id)!;
      const networks = current.spec.networks ?? [];
      this.ctx.network.assertNetworks([network]);
      if (networks.includes(network)) throw new CellError(ErrorCodes.CONFLICT, `VM ${current.name} is on network ${network} already`);
      const live = isLive(current.state) || current.state === 'starting';
      if (networks.length === 0 && live) {
        throw new CellError(ErrorCodes.CONFLICT, `VM ${current.name} runs without a NIC (--network none) and a microVM cannot add one while it runs: stop it, connect it, start it`);
      }
      const updated = this.ctx.stores.vms.setNetworks(vm.id, [...networks, network]);
      if (live) await this.ctx.network.reconfigure(updated);
      return this.ctx.stores.vms.get(vm.id)!;
    });
  }

  /** `cell network disconnect NET VM`: the VM leaves a network and its address there is freed. */
  disconnect(ref: string, network: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.ctx.stores.vms.get(vm.id)!;
      const networks = current.spec.networks ?? [];
      if (!networks.includes(network)) throw new CellError(ErrorCodes.NOT_FOUND, `VM ${current.name} is not on network ${network}`);
      if (networks.length === 1) {
        // Its NIC stays (and is in its snapshots): an empty list would boot it, or fork them, without one.
        throw new CellError(ErrorCodes.CONFLICT, `network ${network} is VM ${current.name}'s only network: connect it to another first (an --internal one to cut it off)`);
      }
      const updated = this.ctx.stores.vms.setNetworks(vm.id, networks.filter((n) => n !== network));
      if (isLive(current.state)) await this.ctx.network.reconfigure(updated);
      else this.ctx.stores.networks.release(vm.id, network);
      return this.ctx.stores.vms.get(vm.id)!;
    });
  }

  /** Records a new VM in state `created` (with its directory, and a pin on its image's blobs). */
  async record(name: string, spec: VmSpec, baseSnapshot: string | null = null, id: string = newId(), opts: { ephemeral?: boolean } = {}): Promise<VmRecord> {
    const vm = newVmRecord(id, name, spec, baseSnapshot);
    await mkdir(this.ctx.paths.vmDir(vm.id), { recursive: true, mode: 0o700 });
    // Half-made until its first boot succeeds (half-made.ts): a dead celld's successor removes it.
    await markHalfMade(this.ctx.paths.vmDir(vm.id), opts.ephemeral ?? false);
    try {
      this.ctx.db.transaction(() => {
        this.ctx.stores.vms.insert(vm);
        this.images.pin('vm', vm.id, spec.imageDigest);
      })();
    } catch (err) {
      await rm(this.ctx.paths.vmDir(vm.id), { recursive: true, force: true });
      throw err;
    }
    return vm;
  }

  /** Boots a created or stopped VM and waits for its agent. The disk is kept across starts. */
  start(ref: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, () => this.boot(vm.id));
  }

  /**
   * Boots VM `id` (its lock held). With `restore`, the VM comes back from the snapshot instead: a
   * fresh overlay on the snapshot's disk layer, its RAM file mapped copy-on-write (or copied), its
   * saved state loaded.
   */
  async boot(id: string, restore?: RestoreRequest): Promise<VmRecord> {
    const { stores, paths } = this.ctx;
    const vm = stores.vms.get(id)!;
    if (isLive(vm.state) || vm.state === 'starting') {
      throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} is already ${vm.state}`);
    }
    if (vm.state === 'suspended' && !restore) {
      throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} is paused to disk: cell unpause ${vm.name} brings it back (cell stop ${vm.name} first to boot its disk instead)`);
    }
    const ready = await this.ctx.host.ensure();
    // A VM on a snapshot's layer needs no image here (an imported snapshot's image may be absent).
    const image = vm.baseSnapshot || restore ? undefined : this.images.require(vm.spec.image);
    // The one-writer check and the move to `starting` under one lock: a VM booting meanwhile sees
    // this one holding its volumes. Each boot starts its health over, as a container's start does.
    const volumes = await this.ctx.locks.run('volumes', async () => {
      const attach = this.volumes.checkAttach(vm);
      stores.vms.setState(id, 'starting', { exit: null, pid: null, accelerator: ready.accelerator.accelerator, health: vm.spec.health ? initialHealth() : null });
      return attach;
    });
    const snapshotDir = restore ? paths.snapshotDir(restore.snapshot.id) : undefined;
    try {
      if (restore && snapshotDir) {
        assertCompatible(restore.snapshot.compat, compatKey(this.ctx, ready), restore.snapshot.name);
        // A spare made its overlays already; anything else starts on fresh ones.
        if (!restore.spare) {
          await rm(join(paths.vmDir(id), 'disk.qcow2'), { force: true });
          await rm(join(paths.vmDir(id), 'data.qcow2'), { force: true });
          await this.ctx.checkpoint('boot:disk-dropped');
        }
        stores.vms.update(id, { baseSnapshot: restore.snapshot.id });
        if (restore.copyMemory) await this.withRamBudget(vm, () => copySparse(join(snapshotDir, 'memory'), paths.memoryFile(id)));
        await this.ctx.checkpoint('boot:memory-ready');
      } else {
        await this.withRamBudget(vm, async () => createMemoryFile(paths, id));
      }
      const current = stores.vms.get(id)!;
      // Its namespace first (QEMU starts in it); a spare's was made with the spare.
      const network = current.spec.networks?.length ? await this.ctx.network.prepare(current) : undefined;
      await this.ctx.live.boot(
        {
          ...(await machineSpecFor(paths, current, ready, image, restore)),
          ...(network ? { network } : {}),
          ...(volumes.length ? { volumes } : {}),
          ...(current.spec.hostFolders?.length ? { hostFolders: current.spec.hostFolders } : {}),
        },
        (pid) => stores.vms.update(id, { pid }),
        restore && snapshotDir ? { statePath: join(snapshotDir, 'state'), identity: restore.identity, prepared: restore.spare?.prepared } : undefined,
      );
      // Its address and published ports (a port already taken on the host fails the boot).
      if (current.spec.networks?.length) await this.ctx.network.attach(current);
    } catch (err) {
      releaseMemory(paths, id);
      await this.ctx.live.kill(id).catch(() => {});
      await this.ctx.network.detach(id).catch(() => {});
      stores.vms.setState(id, 'stopped', { stoppedAt: new Date().toISOString(), pid: null, exit: exitInfo('boot_failed') });
      throw err;
    }
    const running = stores.vms.setState(id, 'running', { startedAt: new Date().toISOString() });
    await clearCreating(paths.vmDir(id));
    await this.ctx.checkpoint('boot:running');
    return running;
  }

  /**
   * Checks the tmpfs has room for the VM's RAM and makes its file, one VM at a time: a check
   * that ran before a sibling's file existed would let concurrent boots oversubscribe it.
   */
  private withRamBudget(vm: VmRecord, makeFile: () => Promise<void>): Promise<void> {
    return this.ctx.locks.run('ram-budget', async () => {
      await assertRamFits(this.ctx, vm);
      await makeFile();
    });
  }

  /** `cell exec`: a command in a running VM, with the VM's env under the caller's. */
  async exec(ref: string, opts: ExecOptions, sink: OutputSink): Promise<ExecResult> {
    const vm = this.resolve(ref);
    validateEnv(opts.env ?? []);
    const agent = this.agentOf(vm);
    const { uid, gid } = parseUser(opts.user ?? vm.spec.user);
    return this.activity.during(vm.id, () => runGuestCommand(
      agent,
      {
        argv: opts.cmd,
        env: mergeEnv(vm.spec.env, opts.env ?? []),
        cwd: opts.workingDir || vm.spec.workingDir,
        uid,
        gid,
        timeoutSec: opts.timeoutSec ?? 0,
        stdin: opts.stdin,
        terminal: opts.terminal,
        signal: opts.signal,
      },
      sink,
    ));
  }

  /** `cell cp HOST VM:PATH`: a host file or directory into a running VM (docker cp's rules, cp-targets.ts). */
  copyIn(ref: string, hostPath: string, guestPath: string, host: HostFs = CELLD_HOST_FS): Promise<CopyResult> {
    const vm = this.resolve(ref);
    const agent = this.agentOf(vm);
    return this.activity.during(vm.id, () => copyIn(agent, hostPath, guestPath, host));
  }

  /** `cell cp VM:PATH HOST`: a file or directory of a running VM onto the host, owned by `owner` when given. */
  copyOut(ref: string, guestPath: string, hostPath: string, owner?: Owner, host: HostFs = CELLD_HOST_FS): Promise<CopyResult> {
    const vm = this.resolve(ref);
    const agent = this.agentOf(vm);
    return this.activity.during(vm.id, () => copyOut(agent, guestPath, hostPath, owner, host));
  }

  statGuestPath(ref: string, path: string, follow = false): Promise<GuestStat> {
    return this.agentOf(this.resolve(ref)).stat(path, { follow });
  }

  /** A regular file of a running VM, streamed; leaving the loop early cancels the read. */
  readGuestFile(ref: string, path: string, maxBytes = 0): AsyncGenerator<Buffer> {
    const vm = this.resolve(ref);
    this.activity.touch(vm.id);
    return this.agentOf(vm).readFile(path, { maxBytes });
  }

  /** Creates or atomically replaces a file in a running VM; resolves with its size. */
  writeGuestFile(ref: string, path: string, meta: PutFileMeta, source: AsyncIterable<Buffer>): Promise<number> {
    const vm = this.resolve(ref);
    const agent = this.agentOf(vm);
    return this.activity.during(vm.id, () => agent.putFile(path, meta, source));
  }

  /** The agent of a running VM. */
  agentOf(vm: VmRecord): AgentClient {
    const current = this.ctx.stores.vms.get(vm.id) ?? vm;
    if (current.state === 'paused' || current.state === 'suspended') throw new CellError(ErrorCodes.VM_PAUSED, `VM ${vm.name} is paused${current.state === 'suspended' ? ' to disk' : ''}: cell unpause ${vm.name}`);
    if (current.state !== 'running') throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state})`);
    return this.ctx.live.require(vm.id).agent;
  }

  /**
   * `cell update`: its time limits change, running or not. A new TTL runs from now (E2B's
   * setTimeout); 0 or null turns a limit off.
   */
  update(ref: string, req: TimeoutsRequest): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () =>
      this.ctx.stores.vms.setTimeouts(vm.id, (current) => {
        const next = applyTimeouts(current, req, new Date());
        const blocking = next?.idleAction === 'pause-to-disk' ? mountsBlockingSnapshot(vm.spec) : null;
        if (blocking) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--idle-action pause-to-disk cannot go with VM ${vm.name}: it ${blocking}, so it cannot be paused to disk`);
        return next;
      }),
    );
  }

  /** `cell pause`: its vCPUs stop (no guest CPU time, its clocks stand still); QEMU and its RAM stay. */
  pause(ref: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.ctx.stores.vms.get(vm.id)!;
      if (current.state === 'paused') return current;
      if (current.state !== 'running') throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state}): only a running VM can be paused`);
      await this.ctx.live.require(vm.id).control.pause();
      return this.ctx.stores.vms.setState(vm.id, 'paused');
    });
  }

  /** `cell unpause`: it runs on where it stopped. */
  unpause(ref: string): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const current = this.ctx.stores.vms.get(vm.id)!;
      if (current.state === 'running') return current;
      if (current.state !== 'paused') throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} is not paused (state: ${current.state})`);
      await this.ctx.live.require(vm.id).control.resume();
      // Unpausing is a use: an idle timeout that paused it starts over.
      this.activity.touch(vm.id);
      return this.ctx.stores.vms.setState(vm.id, 'running');
    });
  }

  /** `reason` is the exit's when the main command left none: `stopped` (a user), `ttl`, `idle`. */
  stop(ref: string, graceSec = 10, reason = 'stopped'): Promise<VmRecord> {
    const vm = this.resolve(ref);
    return this.withLock(vm.id, async () => {
      const { vms } = this.ctx.stores;
      const current = vms.get(vm.id)!;
      if (current.state === 'stopped' || current.state === 'created') return current;
      if (current.state === 'suspended') {
        // No QEMU to stop: its saved memory is let go, and a start boots its disk.
        const stopped = vms.setState(vm.id, 'stopped', { stoppedAt: new Date().toISOString(), exit: exitInfo(reason) });
        if (current.baseSnapshot) await dropSavedMemory(this.ctx.paths.snapshotDir(current.baseSnapshot));
        return stopped;
      }
      // A paused guest cannot shut down: it runs again for its grace period.
      if (current.state === 'paused') await this.ctx.live.get(vm.id)?.control.resume().catch(() => {});
      if (current.state !== 'stopping') vms.setState(vm.id, 'stopping');
      await this.ctx.live.stop(vm.id, graceSec);
      await this.ctx.network.detach(vm.id);
      const stopped = vms.setState(vm.id, 'stopped', {
        stoppedAt: new Date().toISOString(),
        pid: null,
        exit: vms.get(vm.id)!.exit ?? exitInfo(reason),
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
      const { vms } = this.ctx.stores;
      const current = vms.get(vm.id);
      if (!current) return;
      if (current.state !== 'stopped' && current.state !== 'created') {
        if (!force) throw new CellError(ErrorCodes.CONFLICT, `VM ${current.name} is ${current.state}: stop it first or use --force`);
      }
      if (current.state !== 'stopped' && current.state !== 'created' && current.state !== 'suspended') {
        await this.halt(vm.id);
        // A machine this daemon never attached to (it could not) is ended by its pid.
        if (current.pid) await this.ctx.backend.kill(current.pid, vm.id);
      }
      releaseMemory(this.ctx.paths, vm.id);
      await this.ctx.network.detach(vm.id);
      this.ctx.db.transaction(() => {
        vms.delete(vm.id);
        this.images.unpin('vm', vm.id);
        this.ctx.network.forget(vm.id);
      })();
      this.logs.end(vm.id);
      this.logs.forget(vm.id);
      this.activity.forget(vm.id);
      await rm(this.ctx.paths.vmDir(vm.id), { recursive: true, force: true });
      // It may have been the last VM on a snapshot the user removed already.
      if (current.baseSnapshot) await collectRetiredSnapshots(this.ctx, (id) => this.images.unpin('snapshot', id));
    });
  }

  /** Kills a running VM now (no grace) and records it stopped: a restore about to replace it. Lock held. */
  async halt(id: string): Promise<void> {
    const { vms } = this.ctx.stores;
    const current = vms.get(id)!;
    if (current.state === 'stopped' || current.state === 'created') return;
    if (current.state !== 'stopping') vms.setState(id, 'stopping');
    await this.ctx.live.kill(id);
    await this.ctx.network.detach(id);
    vms.setState(id, 'stopped', { pid: null, stoppedAt: new Date().toISOString(), exit: vms.get(id)!.exit ?? exitInfo('stopped') });
  }

  /** The main command's output; with `follow`, keeps going until the VM stops or `signal` aborts. */
  /**
   * The main command's output: entries at or after `since` and before `until`, only the last `tail`
   * lines of what is kept, and with `follow` new entries until the VM stops.
   */
  async *readLogs(ref: string, opts: LogReadOptions = {}, signal?: AbortSignal): AsyncGenerator<LogEntry> {
    const vm = this.resolve(ref);
    const since = opts.since?.toISOString();
    const until = opts.until?.toISOString();
    // ISO times of one format compare as strings.
    const wanted = (e: LogEntry) => (!since || e.time >= since) && (!until || e.time < until);
    const tail = opts.tail === undefined ? undefined : new LogTail<LogEntry>(opts.tail);
    let wake: (() => void) | null = null;
    const poke = () => wake?.();
    this.logs.on(`entry:${vm.id}`, poke);
    this.logs.on(`end:${vm.id}`, poke);
    signal?.addEventListener('abort', poke);
    try {
      let cursor = this.logs.start(vm.id);
      let caughtUp = false;
      for (;;) {
        // Arm the wake-up before reading so an entry written meanwhile is not slept through.
        const woken = new Promise<void>((resolve) => (wake = resolve));
        const batch = await this.logs.readFrom(vm.id, cursor);
        cursor = batch.cursor;
        for (const entry of batch.entries) {
          if (!wanted(entry)) continue;
          if (tail && !caughtUp) tail.push(entry);
          else yield entry;
        }
        if (batch.more && !signal?.aborted) continue;
        if (tail && !caughtUp) yield* tail.entries();
        caughtUp = true;
        const state = this.ctx.stores.vms.get(vm.id)?.state;
        if (!opts.follow || signal?.aborted || !state || state === 'stopped' || state === 'created') return;
        if (until && new Date().toISOString() >= until) return;
        await woken;
      }
    } finally {
      this.logs.off(`entry:${vm.id}`, poke);
      this.logs.off(`end:${vm.id}`, poke);
      signal?.removeEventListener('abort', poke);
    }
  }

  /** Throws `conflict` when a VM has the name already. */
  assertNameFree(name: string): void {
    if (this.ctx.stores.vms.nameExists(name)) throw new CellError(ErrorCodes.CONFLICT, `the name "${name}" is already in use by another VM`);
  }

  /** `name`, or `name-<hex>` when a VM has it already (the VMs of actions and templates). */
  availableName(name: string): string {
    return this.ctx.stores.vms.nameExists(name) ? `${name}-${randomBytes(2).toString('hex')}` : name;
  }

  /**
   * `count` names `prefix-N`, numbered on from the highest a VM has already (a second
   * `fork --count 10` of one snapshot makes -11 to -20, as `docker compose up --scale` does).
   */
  numberedNames(prefix: string, count: number): string[] {
    const numbered = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-(\\d+)$`);
    let highest = 0;
    for (const vm of this.ctx.stores.vms.list()) {
      const n = numbered.exec(vm.name)?.[1];
      if (n !== undefined) highest = Math.max(highest, Number(n));
    }
    return Array.from({ length: count }, (_, i) => `${prefix}-${highest + i + 1}`);
  }

  freshName(): string {
    for (;;) {
      const name = randomName();
      if (!this.ctx.stores.vms.nameExists(name)) return name;
    }
  }

  /** The machine of VM `id` ended; unless someone asked for that, the VM crashed. */
  /**
   * The guest's OOM killer ended a process: an `oom` event ({ pid, process }), as Docker records
   * a container's OOM kill; a few a second per VM at most (domain/oom.ts).
   */
  onGuestOom(id: string, pid: number, name: Buffer): void {
    const kill = oomKill(pid, name);
    const vm = this.ctx.stores.vms.get(id);
    if (!kill || !vm) return;
    let limit = this.oomLimits.get(id);
    if (!limit) this.oomLimits.set(id, (limit = new EventRateLimit()));
    const allowed = limit.take();
    if (!allowed) return;
    try {
      this.ctx.stores.vms.recordEvent(vm, 'oom', oomAttributes(kill, allowed.suppressed));
    } catch (err) {
      this.ctx.log.warn(`oom event of ${id.slice(0, 12)}: ${(err as Error).message}`);
    }
  }

  onMachineGone(id: string, expected: boolean): void {
    this.oomLimits.delete(id);
    releaseMemory(this.ctx.paths, id);
    // Expected: whoever ended it (stop, remove, a snapshot that boots it again) decides about its network.
    if (expected) return;
    void this.ctx.network.detach(id).catch((err: unknown) => this.ctx.log.warn(`network of ${id.slice(0, 12)}: ${(err as Error).message}`));
    const vm = this.ctx.stores.vms.get(id);
    if (vm && (isLive(vm.state) || vm.state === 'starting')) {
      this.ctx.stores.vms.setState(id, 'stopped', { stoppedAt: new Date().toISOString(), pid: null, exit: vm.exit ?? exitInfo('crashed') });
    }
    this.logs.end(id);
  }
}

/**
 * Host folders as the caller can reach them: each must be a directory they may enter, recorded by
 * its canonical path (symlinks resolved with their access, now) with who shares it.
 */
async function resolveHostFolders(requests: readonly Extract<MountRequest, { kind: 'host' }>[], host: HostFs): Promise<HostFolderMount[]> {
  const resolved: HostFolderMount[] = [];
  for (const r of requests) {
    const source = await host.realpath(r.source).catch(hostPathError(r.source));
    const st = await host.stat(source).catch(hostPathError(r.source));
    if (!st.isDirectory()) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `-v ${r.source}: a host folder must be a directory (to share one file, share its folder)`);
    // Its virtiofsd will run with this access: a folder they cannot list is theirs to fix, now.
    await host.readdir(source).catch(hostPathError(r.source));
    resolved.push({ source, path: r.path, readOnly: r.readOnly, owner: { ...host.identity, groups: [...host.identity.groups] } });
  }
  return resolved;
}
