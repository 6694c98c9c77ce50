import type { Snapshot } from '../api/snapshots.js';
import type { RunRequest, Vm, VmStats } from '../api/vms.js';
import { CellClient, type ConnectOptions } from './client.js';
import { isNotFound } from './errors.js';
import type { RequestOptions } from './options.js';
import { SandboxCommands } from './sandbox-commands.js';
import { SandboxFiles } from './sandbox-files.js';
import { SandboxPty } from './sandbox-pty.js';
import type { VmStopOptions } from './vms.js';
import { absoluteMount } from './volumes.js';

// Node 20 has no Symbol.asyncDispose yet; `await using` needs it (TypeScript emits a lookup of it).
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose');

export const DEFAULT_SANDBOX_IMAGE = 'busybox';

export interface SandboxConnectOptions extends RequestOptions {
  /** A client to share; without one the sandbox connects (and disconnects when disposed). */
  client?: CellClient;
  /** How to connect when no client is given. */
  connect?: ConnectOptions;
}

export interface SandboxOptions extends SandboxConnectOptions {
  /** Image to boot (default busybox). */
  image?: string;
  name?: string;
  cpus?: number;
  memoryMib?: number;
  /** KEY=VALUE pairs every command sees. */
  env?: string[];
  workingDir?: string;
  user?: string;
  /** Fork this snapshot instead of booting the image. */
  fromSnapshot?: string;
  /** Start from a template (`NAME` or `TEMPLATE_ID:ROLE`): warm from its snapshot when it has one. */
  template?: string;
  /** An empty ext4 disk of this many MiB at /data. */
  dataDiskMib?: number;
  /** Disk and entropy rates QEMU holds the sandbox to (images only; forks keep their snapshot's). */
  limits?: RunRequest['limits'];
  /** Networks by name (default: the default network where celld has one); `['none']`: no NIC. */
  networks?: string[];
  /** Guest ports to publish (a host port of 0, or none: a free one; host address 127.0.0.1 unless given). */
  ports?: RunRequest['ports'];
  /** Egress rules as `--egress` takes them: `allow=pypi.org,*.pythonhosted.org`, `deny=...`. */
  egress?: string[];
  /**
   * Named volumes and host folders by guest path: `{ '/cache': 'pip-cache' }`, `{ '/work': './src' }`
   * (a host folder: a path, relative to this process's working directory), or
   * `{ '/ref': { name: 'data', readOnly: true } }`; a volume that does not exist is made (images only).
   */
  volumes?: Record<string, string | { name: string; readOnly?: boolean }>;
}

export interface SandboxSnapshotOptions extends RequestOptions {
  name?: string;
}

export interface SandboxForkOptions extends RequestOptions {
  /** How many forks (default 1). */
  count?: number;
  /** Name of the fork, or prefix of the forks' names. */
  name?: string;
  /** Name of the snapshot taken first. */
  snapshotName?: string;
}

/**
 * One running VM, E2B style: sub-clients for its commands and files on one shared client.
 *
 *   await using sb = await Sandbox.create();
 *   const { stdout } = await sb.commands.run('uname -a');
 *
 * leaves nothing behind when the block ends (the VM is force-removed).
 */
export class Sandbox {
  /** Commands: `run` to the end, or `start` for a handle (wait, kill, stdin, output as it comes). */
  readonly commands: SandboxCommands;
  /** Files: read, write, stat, exists, list, mkdir, remove, upload, download. */
  readonly files: SandboxFiles;
  /** Terminals: `create({ cols, rows, onData })` for a shell on a pseudo-terminal (write, resize, kill, wait). */
  readonly pty: SandboxPty;

  private constructor(
    readonly client: CellClient,
    private vm: Vm,
    private readonly ownsClient: boolean,
  ) {
    const id = () => this.vm.id;
    this.commands = new SandboxCommands(client.vms, id);
    this.files = new SandboxFiles(client.files, client.vms, id);
    this.pty = new SandboxPty(client.vms, id);
  }

  /** Boots a VM (or forks a snapshot) that stays up until it is stopped or removed. */
  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const client = opts.client ?? (await CellClient.connect(opts.connect));
    const call = { signal: opts.signal, timeoutMs: opts.timeoutMs };
    try {
      if (opts.fromSnapshot) {
        const [vm] = await client.snapshots.fork(opts.fromSnapshot, { ...call, count: 1, name: opts.name });
        return new Sandbox(client, vm!, !opts.client);
      }
      const vm = await client.vms.create(
        {
          ...(opts.template ? { template: opts.template } : { image: opts.image ?? DEFAULT_SANDBOX_IMAGE, dataDiskMib: opts.dataDiskMib, limits: opts.limits, networks: opts.networks, egress: opts.egress }),
          ...(opts.volumes ? { volumes: volumeFlags(opts.volumes) } : {}),
          ports: opts.ports,
          name: opts.name,
          cpus: opts.cpus,
          memoryMib: opts.memoryMib,
          env: opts.env,
          workingDir: opts.workingDir,
          user: opts.user,
        },
        call,
      );
      return new Sandbox(client, vm, !opts.client);
    } catch (err) {
      if (!opts.client) client.close();
      throw err;
    }
  }

  /** A sandbox for an existing VM (by name, id or unique id prefix). */
  static async connect(ref: string, opts: SandboxConnectOptions = {}): Promise<Sandbox> {
    const client = opts.client ?? (await CellClient.connect(opts.connect));
    try {
      return new Sandbox(client, await client.vms.get(ref, opts), !opts.client);
    } catch (err) {
      if (!opts.client) client.close();
      throw err;
    }
  }

  get id(): string {
    return this.vm.id;
  }

  get name(): string {
    return this.vm.name;
  }

  /** The VM record as last seen (call `refresh()` for its current state). */
  get info(): Vm {
    return this.vm;
  }

  /**
   * Where a published guest port is reachable from this host, as `host:port` (E2B's getHost):
   * `sandbox.getHost(8080)` after creating it with `ports: [{ guestPort: 8080 }]`.
   */
  async getHost(guestPort: number, protocol: 'tcp' | 'udp' = 'tcp', opts: RequestOptions = {}): Promise<string> {
    const vm = await this.refresh(opts);
    const port = vm.network?.ports.find((p) => p.guestPort === guestPort && p.protocol === protocol);
    if (!port) throw new Error(`sandbox ${vm.name} does not publish ${guestPort}/${protocol} (create it with ports: [{ guestPort: ${guestPort} }])`);
    return `${port.hostIp === '0.0.0.0' ? '127.0.0.1' : port.hostIp}:${port.hostPort}`;
  }

  async refresh(opts: RequestOptions = {}): Promise<Vm> {
    this.vm = await this.client.vms.get(this.vm.id, opts);
    return this.vm;
  }

  /** Captures memory, devices and disk; the VM keeps running. */
  snapshot(opts: SandboxSnapshotOptions = {}): Promise<Snapshot> {
    return this.client.snapshots.take(this.vm.id, opts);
  }

  /**
   * Snapshots this VM (it keeps running) and starts `count` forks of the snapshot, each with its
   * own identity: sandboxes sharing this one's client, each removed by its own `await using`.
   * The snapshot stays (the forks' disks sit on it); remove it with client.snapshots.remove.
   */
  async fork(opts: SandboxForkOptions = {}): Promise<Sandbox[]> {
    const call = { signal: opts.signal, timeoutMs: opts.timeoutMs };
    const snap = await this.snapshot({ ...call, name: opts.snapshotName });
    const vms = await this.client.snapshots.fork(snap.id, { ...call, count: opts.count ?? 1, name: opts.name });
    return vms.map((vm) => new Sandbox(this.client, vm, false));
  }

  /** Stops the VM (SIGTERM to its processes, SIGKILL after `graceMs`), keeping its disk. */
  async stop(opts: VmStopOptions = {}): Promise<void> {
    this.vm = await this.client.vms.stop(this.vm.id, opts);
  }

  /**
   * Pauses the VM: no guest CPU time, its clocks stand still; its RAM stays on the host. With
   * `persist` (E2B's pause) its memory goes to disk and its QEMU ends, freeing the host's RAM;
   * `resume()` brings it back with its processes and files, under the same id.
   */
  async pause(opts: RequestOptions & { persist?: boolean } = {}): Promise<void> {
    const { persist, ...call } = opts;
    this.vm = await this.client.vms.pause(this.vm.id, { ...call, toDisk: persist });
  }

  /**
   * Stops the sandbox (removes it, if created with autoRemove) `timeoutMs` from now, as E2B's
   * setTimeout; 0 turns the limit off. Survives celld restarts.
   */
  async setTimeout(timeoutMs: number, opts: RequestOptions = {}): Promise<void> {
    this.vm = await this.client.vms.update(this.vm.id, { ttlMs: Math.max(0, Math.round(timeoutMs)) }, opts);
  }

  /** Lets a paused VM run on. */
  async resume(opts: RequestOptions = {}): Promise<void> {
    this.vm = await this.client.vms.unpause(this.vm.id, opts);
  }

  /**
   * Until its health check (`health: { cmd }` at create) has passed; rejects with code `timeout`
   * after `timeoutMs` (naming the last check's exit code and output), or `vm_not_running` when it
   * stops first.
   */
  async waitHealthy(opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    this.vm = await this.client.vms.wait(this.vm.id, { until: 'healthy', ...opts });
  }

  /** Until its main command has exited or the VM stopped (docker wait); its `info.exit` then says how. */
  async wait(opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<Vm> {
    this.vm = await this.client.vms.wait(this.vm.id, opts);
    return this.vm;
  }

  /**
   * Its host-side resource use over one second: QEMU's CPU % (100 = one core), memory RSS and PSS,
   * disk and network bytes (null where not running or nothing counts them). Takes about a second.
   */
  getMetrics(opts: RequestOptions = {}): Promise<VmStats> {
    return this.client.vms.stats(this.vm.id, opts);
  }

  /** Boots the stopped VM again. */
  async start(opts: RequestOptions = {}): Promise<void> {
    this.vm = await this.client.vms.start(this.vm.id, opts);
  }

  /** Removes a stopped VM and its disk (celld refuses a running one: use `kill()`). */
  remove(opts: RequestOptions = {}): Promise<void> {
    return this.client.vms.remove(this.vm.id, opts);
  }

  /** Removes the VM whatever its state, without a grace period. */
  kill(opts: RequestOptions = {}): Promise<void> {
    return this.client.vms.remove(this.vm.id, { ...opts, force: true });
  }

  /** `await using`: kills the VM (a VM already gone is fine) and closes a client it opened itself. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.kill().catch((err: unknown) => {
        if (!isNotFound(err)) throw err;
      });
    } finally {
      if (this.ownsClient) this.client.close();
    }
  }
}

/** `{ '/cache': 'pip-cache' }` as `-v` takes it: `pip-cache:/cache`. */
function volumeFlags(volumes: NonNullable<SandboxOptions['volumes']>): string[] {
  return Object.entries(volumes).map(([path, v]) => absoluteMount(typeof v === 'string' ? `${v}:${path}` : `${v.name}:${path}${v.readOnly ? ':ro' : ''}`));
}
