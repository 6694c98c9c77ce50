import { once } from 'node:events';
import { CommandHandle } from './command-handle.js';
import type { CommandResult } from './commands.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { RequestOptions } from './options.js';
import type { Command } from './sandbox-commands.js';
import type { ExecSpec, VmsClient } from './vms.js';

/** A terminal's size in character cells (1..1000 each). */
export interface PtySize {
  cols: number;
  rows: number;
}

export interface PtyCreateOptions extends PtySize, Pick<RequestOptions, 'signal'> {
  /** Everything the terminal shows (the command's stdout and stderr, and the echo of what is typed), as it comes. */
  onData: (data: Uint8Array) => void | Promise<void>;
  /** What runs on the terminal (default: `/bin/sh`); a string runs through `sh -c`. */
  cmd?: Command;
  /** KEY=VALUE pairs (or an object, as E2B's `envs`), besides the sandbox's own. TERM defaults to xterm-256color. */
  env?: string[] | Record<string, string>;
  cwd?: string;
  user?: string;
}

/**
 * A command on a pseudo-terminal in a sandbox (`sandbox.pty.create`), as E2B's pty: `write` what
 * is typed (a `\x03` is Ctrl-C: the terminal interrupts its foreground process), `resize` it,
 * `kill` it, `wait` for its exit code.
 */
export class PtyHandle {
  private readonly command: CommandHandle;
  private readonly execId: Promise<string>;
  private readonly startedAt = performance.now();
  private killed = false;
  private done = false;

  constructor(
    private readonly vms: VmsClient,
    ref: string,
    spec: ExecSpec,
    opts: PtyCreateOptions,
  ) {
    let named!: (execId: string) => void;
    this.execId = new Promise((resolve) => (named = resolve));
    this.command = new CommandHandle(
      (handlers, stdin, signal) => this.vms.exec(ref, spec, { ...handlers, stdin, signal, onExec: named }),
      { onStdout: opts.onData },
      true,
      opts.signal,
      false,
    );
    const settled = () => {
      this.done = true;
    };
    this.command.wait().then(settled, settled);
  }

  /** Sends keystrokes (or any bytes) to the terminal; resolves once they are on their way. */
  async write(data: string | Uint8Array): Promise<void> {
    const stdin = this.command.stdin!;
    if (this.done || stdin.writableEnded) throw new CellError(ErrorCodes.CONFLICT, 'the pty has ended');
    if (!stdin.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data))) await once(stdin, 'drain');
  }

  /** A new size: the guest's foreground process gets SIGWINCH. */
  async resize(size: PtySize): Promise<void> {
    const ended = this.command.wait().then(
      () => Promise.reject(new CellError(ErrorCodes.CONFLICT, 'the pty has ended')),
      (err: unknown) => Promise.reject(err),
    );
    ended.catch(() => {});
    if (this.done) return ended;
    const execId = await Promise.race([this.execId, ended]);
    await this.vms.resizeExec(execId, size).catch((err: unknown) => {
      // celld knows no running exec by that id: it ended meanwhile.
      throw err instanceof CellError && err.code === ErrorCodes.NOT_FOUND ? new CellError(ErrorCodes.CONFLICT, 'the pty has ended') : err;
    });
  }

  /** Kills the command (SIGKILL); false when it had ended already. `wait()` then resolves with signal 9. */
  async kill(): Promise<boolean> {
    if (this.done) return false;
    this.killed = true;
    await this.command.kill();
    return true;
  }

  /** How the command ended: its exit code (128+N for signal N; 137 after `kill`). */
  async wait(): Promise<CommandResult> {
    try {
      return await this.command.wait();
    } catch (err) {
      // kill() closes the stream, which makes celld SIGKILL the command: that is how it ended.
      if (this.killed) return { exitCode: 137, signal: 9, timedOut: false, durationMs: performance.now() - this.startedAt };
      throw err;
    }
  }
}

/** Terminals in one sandbox. */
export class SandboxPty {
  constructor(
    private readonly vms: VmsClient,
    private readonly vmId: () => string,
  ) {}

  /** Starts a command (a shell by default) on a new pseudo-terminal of `cols` x `rows`. */
  async create(opts: PtyCreateOptions): Promise<PtyHandle> {
    const cmd = opts.cmd ?? ['/bin/sh'];
    const env = Array.isArray(opts.env) ? opts.env : Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`);
    const spec: ExecSpec = {
      cmd: typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd,
      tty: true,
      cols: opts.cols,
      rows: opts.rows,
      ...(env.length ? { env } : {}),
      ...(opts.cwd !== undefined ? { workingDir: opts.cwd } : {}),
      ...(opts.user !== undefined ? { user: opts.user } : {}),
    };
    return new PtyHandle(this.vms, this.vmId(), spec, opts);
  }
}
