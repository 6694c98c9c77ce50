import type { CopyResult, GuestFileStat, Snapshot, Vm } from '../api/schemas.js';
import { CellClient, type ConnectOptions } from './client.js';
import type { CommandResult, ExecHandlers } from './commands.js';

// Node 20 has no Symbol.asyncDispose yet; `await using` needs it (TypeScript emits a lookup of it).
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose');

export const DEFAULT_SANDBOX_IMAGE = 'busybox';

export interface SandboxOptions {
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
  /** A client to share; without one the sandbox connects (and disconnects when disposed). */
  client?: CellClient;
  /** How to connect when no client is given. */
  connect?: ConnectOptions;
}

export interface SandboxExecOptions extends ExecHandlers {
  env?: string[];
  workingDir?: string;
  user?: string;
  timeoutSec?: number;
}

export interface OutputResult extends CommandResult {
  stdout: string;
  stderr: string;
}

/**
 * One running VM, E2B style:
 *
 *   await using sb = await Sandbox.create();
 *   const { stdout } = await sb.run('uname -a');
 *
 * leaves nothing behind when the block ends (the VM is force-removed).
 */
export class Sandbox {
  private constructor(
    readonly client: CellClient,
    private vm: Vm,
    private readonly ownsClient: boolean,
  ) {}

  /** Boots a VM that stays up until it is stopped or removed. */
  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const client = opts.client ?? (await CellClient.connect(opts.connect));
    try {
      if (opts.fromSnapshot) {
        const [vm] = await client.snapshots.fork(opts.fromSnapshot, { count: 1, name: opts.name });
        return new Sandbox(client, vm!, !opts.client);
      }
      const vm = await client.vms.create({
        ...(opts.template ? { template: opts.template } : { image: opts.image ?? DEFAULT_SANDBOX_IMAGE, dataDiskMib: opts.dataDiskMib }),
        name: opts.name,
        cpus: opts.cpus,
        memoryMib: opts.memoryMib,
        env: opts.env,
        workingDir: opts.workingDir,
        user: opts.user,
      });
      return new Sandbox(client, vm, !opts.client);
    } catch (err) {
      if (!opts.client) client.close();
      throw err;
    }
  }

  /** A sandbox for an existing VM (by name, id or unique id prefix). */
  static async connect(ref: string, opts: { client?: CellClient; connect?: ConnectOptions } = {}): Promise<Sandbox> {
    const client = opts.client ?? (await CellClient.connect(opts.connect));
    try {
      return new Sandbox(client, await client.vms.get(ref), !opts.client);
    } catch (err) {
      if (!opts.client) client.close();
      throw err;
    }
  }

  get id(): string {
    return this.vm.id;
  }

  /**
   * Files in the VM. Guest paths are absolute; host paths are resolved against this process's
   * working directory.
   *
   *   await box.files.write('/app/config.json', JSON.stringify(config));
   *   const text = (await box.files.read('/app/out.txt')).toString();
   *   await box.files.upload('./src', '/app/src');
   */
  readonly files = {
    /** Creates or atomically replaces a file (parents are created; mode 0644 and owner root by default). */
    write: (path: string, data: string | Uint8Array | AsyncIterable<Buffer | string>, opts: { mode?: number; uid?: number; gid?: number } = {}): Promise<void> =>
      this.client.files.write(this.vm.id, path, data, opts),
    /** A file's bytes; one over `maxBytes` is a `size_limit` error. */
    read: (path: string, opts: { maxBytes?: number; signal?: AbortSignal } = {}): Promise<Buffer> => this.client.files.read(this.vm.id, path, opts),
    /** A file's bytes as they arrive. */
    readStream: (path: string, opts: { maxBytes?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer> =>
      this.client.files.readStream(this.vm.id, path, opts),
    /** lstat (stat with `follow`); a missing path is a `not_found` error. */
    stat: (path: string, opts: { follow?: boolean } = {}): Promise<GuestFileStat> => this.client.files.stat(this.vm.id, path, opts),
    /** A host file or directory into the VM, like `cell cp HOST VM:PATH`. */
    upload: (hostPath: string, guestPath: string): Promise<CopyResult> => this.client.files.copyIn(this.vm.id, hostPath, guestPath),
    /** A file or directory of the VM onto the host, like `cell cp VM:PATH HOST`. */
    download: (guestPath: string, hostPath: string): Promise<CopyResult> => this.client.files.copyOut(this.vm.id, guestPath, hostPath),
  };

  get name(): string {
    return this.vm.name;
  }

  /** The VM record as last seen (call `refresh()` for its current state). */
  get info(): Vm {
    return this.vm;
  }

  async refresh(): Promise<Vm> {
    this.vm = await this.client.vms.get(this.vm.id);
    return this.vm;
  }

  /** Runs a command, streaming its output to the handlers. A string runs through `sh -c`. */
  exec(cmd: string | string[], opts: SandboxExecOptions = {}): Promise<CommandResult> {
    const argv = typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd;
    const { env, workingDir, user, timeoutSec, ...handlers } = opts;
    return this.client.exec(this.vm.id, { cmd: argv, env, workingDir, user, timeoutSec }, handlers);
  }

  /** Runs a command and collects its output as text. */
  async run(cmd: string | string[], opts: Omit<SandboxExecOptions, 'onStdout' | 'onStderr'> = {}): Promise<OutputResult> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const result = await this.exec(cmd, { ...opts, onStdout: (c) => void out.push(c), onStderr: (c) => void err.push(c) });
    return { ...result, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  }

  /** Captures memory, devices and disk; the VM keeps running. */
  snapshot(opts: { name?: string } = {}): Promise<Snapshot> {
    return this.client.snapshots.take(this.vm.id, opts);
  }

  /**
   * Snapshots this VM (it keeps running) and starts `count` forks of the snapshot, each with its
   * own identity: sandboxes sharing this one's client, each removed by its own `await using`.
   * The snapshot stays (the forks' disks sit on it); remove it with client.snapshots.remove.
   */
  async fork(opts: { count?: number; name?: string; snapshotName?: string } = {}): Promise<Sandbox[]> {
    const snap = await this.snapshot({ name: opts.snapshotName });
    const vms = await this.client.snapshots.fork(snap.id, { count: opts.count ?? 1, ...(opts.name !== undefined ? { name: opts.name } : {}) });
    return vms.map((vm) => new Sandbox(this.client, vm, false));
  }

  /** Stops the VM (SIGTERM to its processes, SIGKILL after `timeoutSec`), keeping its disk. */
  async stop(opts: { timeoutSec?: number } = {}): Promise<void> {
    this.vm = await this.client.vms.stop(this.vm.id, opts);
  }

  /** Boots the stopped VM again. */
  async start(): Promise<void> {
    this.vm = await this.client.vms.start(this.vm.id);
  }

  /** Removes a stopped VM and its disk (celld refuses a running one: use `kill()`). */
  remove(): Promise<void> {
    return this.client.vms.remove(this.vm.id);
  }

  /** Removes the VM whatever its state, without a grace period. */
  kill(): Promise<void> {
    return this.client.vms.remove(this.vm.id, { force: true });
  }

  /** `await using`: kills the VM (a VM already gone is fine) and closes a client it opened itself. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.kill().catch((err: unknown) => {
        if ((err as { code?: string }).code !== 'not_found') throw err;
      });
    } finally {
      if (this.ownsClient) this.client.close();
    }
  }
}
