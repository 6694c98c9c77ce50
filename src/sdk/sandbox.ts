import type { Vm } from '../api/schemas.js';
import { CellClient, type CommandResult, type ExecHandlers } from './client.js';

// Node 20 has no Symbol.asyncDispose yet; `await using` needs it.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose');

export interface SandboxOptions {
  image?: string;
  name?: string;
  cpus?: number;
  memoryMib?: number;
  env?: string[];
  /** Fork this snapshot instead of booting the image. */
  fromSnapshot?: string;
  client?: CellClient;
}

export interface SandboxExecOptions extends ExecHandlers {
  env?: string[];
  workingDir?: string;
  user?: string;
  timeoutSec?: number;
}

/** One running VM, E2B style: `await using sb = await Sandbox.create()` removes it afterwards. */
export class Sandbox {
  private constructor(
    readonly client: CellClient,
    private vm: Vm,
  ) {}

  static async create(opts: SandboxOptions = {}): Promise<Sandbox> {
    const client = opts.client ?? (await CellClient.connect());
    if (opts.fromSnapshot) {
      const [vm] = await client.snapshots.fork(opts.fromSnapshot, { count: 1, name: opts.name });
      return new Sandbox(client, vm!);
    }
    const vm = await client.vms.create({ image: opts.image ?? 'busybox', name: opts.name, cpus: opts.cpus, memoryMib: opts.memoryMib, env: opts.env });
    return new Sandbox(client, vm);
  }

  get id(): string {
    return this.vm.id;
  }

  get name(): string {
    return this.vm.name;
  }

  /** A string runs through `sh -c`; an array runs as is. */
  exec(cmd: string | string[], opts: SandboxExecOptions = {}): Promise<CommandResult> {
    const argv = typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd;
    const { env, workingDir, user, timeoutSec, ...handlers } = opts;
    return this.client.exec(this.vm.id, { cmd: argv, env, workingDir, user, timeoutSec }, handlers);
  }

  /** Runs a command and collects its output as text. */
  async run(cmd: string | string[], opts: Omit<SandboxExecOptions, 'onStdout' | 'onStderr'> = {}): Promise<CommandResult & { stdout: string; stderr: string }> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const result = await this.exec(cmd, { ...opts, onStdout: (c) => out.push(c), onStderr: (c) => err.push(c) });
    return { ...result, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  }

  snapshot(opts: { name?: string } = {}) {
    return this.client.snapshots.take(this.vm.id, opts);
  }

  async stop(timeoutSec?: number): Promise<void> {
    this.vm = await this.client.vms.stop(this.vm.id, { timeoutSec });
  }

  /** Removes the VM, stopping it first if needed. */
  kill(): Promise<void> {
    return this.client.vms.remove(this.vm.id, { force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill().catch(() => {});
  }
}
