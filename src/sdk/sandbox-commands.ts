import { CommandHandle } from './command-handle.js';
import type { CommandResult, StdinSource } from './commands.js';
import type { OutputHandlers, RequestOptions } from './options.js';
import type { ExecSpec, VmsClient } from './vms.js';

export interface CommandOptions extends RequestOptions, OutputHandlers {
  /** KEY=VALUE pairs, besides the sandbox's own. */
  env?: string[];
  workingDir?: string;
  user?: string;
  /** celld kills the command after this long; the result then has exit code 124 and `timedOut`. */
  commandTimeoutMs?: number;
}
export interface CommandRunOptions extends CommandOptions {
  /** Bytes for the command's stdin; the end of the iterable closes it. */
  stdin?: StdinSource;
}
export interface CommandStartOptions extends CommandOptions {
  /** `true`: write to `handle.stdin` yourself; or a source of bytes to send. */
  stdin?: boolean | StdinSource;
  /** Keep output for `for await` over the handle (default true); false when callbacks are all you use. */
  keepOutput?: boolean;
}

/** A finished command with its output as text. */
export interface CommandOutput extends CommandResult {
  stdout: string;
  stderr: string;
}

/** A string runs through `sh -c`; an array is the argv itself. */
export type Command = string | string[];

/** Commands in one sandbox: `run` waits for the end, `start` hands back a handle. */
export class SandboxCommands {
  constructor(
    private readonly vms: VmsClient,
    private readonly vmId: () => string,
  ) {}

  /**
   * Runs a command to its end and returns its exit status and its output as text; output also
   * goes to onStdout/onStderr as it arrives. A non-zero exit is a result, not an error.
   */
  async run(cmd: Command, opts: CommandRunOptions = {}): Promise<CommandOutput> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const result = await this.vms.exec(this.vmId(), execSpec(cmd, opts), {
      signal: opts.signal,
      timeoutMs: opts.timeoutMs,
      stdin: opts.stdin,
      onStdout: async (c) => {
        out.push(c);
        await opts.onStdout?.(c);
      },
      onStderr: async (c) => {
        err.push(c);
        await opts.onStderr?.(c);
      },
    });
    return { ...result, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
  }

  /** Starts a command and returns at once: `wait()`, `kill()`, `stdin`, and its output as it comes. */
  async start(cmd: Command, opts: CommandStartOptions = {}): Promise<CommandHandle> {
    const spec = execSpec(cmd, opts);
    const ref = this.vmId();
    return new CommandHandle(
      (handlers, stdin, signal) => this.vms.exec(ref, spec, { ...handlers, stdin, signal, timeoutMs: opts.timeoutMs }),
      opts,
      opts.stdin,
      opts.signal,
      opts.keepOutput ?? true,
    );
  }
}

function execSpec(cmd: Command, opts: CommandOptions): ExecSpec {
  const argv = typeof cmd === 'string' ? ['sh', '-c', cmd] : cmd;
  return { cmd: argv, env: opts.env, workingDir: opts.workingDir, user: opts.user, commandTimeoutMs: opts.commandTimeoutMs };
}
