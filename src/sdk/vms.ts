import { PassThrough } from 'node:stream';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { matchesLabels } from '../domain/labels.js';
import { Api } from '../api/routes.js';
import type { RunRequest, UpdateRequest, Vm, VmStats } from '../api/vms.js';
import { execStream, runStream, type CommandResult, type LogEntry, type RunEventHandlers, type StdinSource } from './commands.js';
import { toSeconds, type OutputHandlers, type RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { vms } = Api;

/** What to boot and run: the wire's RunRequest with the command's time limit in milliseconds. */
export type VmSpec = Omit<RunRequest, 'timeoutSec'> & {
  /** celld kills the command after this long; the result then has exit code 124 and `timedOut`. */
  commandTimeoutMs?: number;
};

/** A command to run in a running VM. */
export interface ExecSpec {
  cmd: string[];
  /** KEY=VALUE pairs. */
  env?: string[];
  workingDir?: string;
  user?: string;
  /** celld kills the command after this long; the result then has exit code 124 and `timedOut`. */
  commandTimeoutMs?: number;
  /**
   * Run on a pseudo-terminal in the guest (of `cols` x `rows`, default 80x24): stdout and stderr
   * are one stream (onStdout), stdin is what is typed (0x03 interrupts); resize with `resizeExec`.
   */
  tty?: boolean;
  cols?: number;
  rows?: number;
}

export interface VmListOptions extends RequestOptions {
  /** Stopped VMs too. */
  all?: boolean;
  /** Only VMs with every one of these labels: `k` (has the key) or `k=v`. */
  labels?: string[];
}
export interface VmRunOptions extends RequestOptions, RunEventHandlers {}
export interface VmStopOptions extends RequestOptions {
  /** How long processes get after SIGTERM before SIGKILL (default 10 000). */
  graceMs?: number;
}
export interface RemoveOptions extends RequestOptions {
  /** Remove it even when running (a VM) or still needed (snapshot, image, template). */
  force?: boolean;
}
export interface ExecOptions extends RequestOptions, OutputHandlers {
  /** Bytes for the command's stdin; the end of the iterable closes it. */
  stdin?: StdinSource;
  /** The exec's id as soon as celld names it (with stdin or tty): what `resizeExec` takes. */
  onExec?(execId: string): void;
}
export interface WaitOptions extends RequestOptions {
  /** `stopped` (default) or `healthy`. */
  until?: 'stopped' | 'healthy';
  /** Give up after this long: rejects with a CellError of code `timeout` naming the last check's result. */
  timeoutMs?: number;
  /** Each change of its health while waiting for `healthy`. */
  onHealth?: (vm: Vm) => void;
}
export interface AttachOptions extends OutputHandlers {
  /** Bytes for the main command's stdin (started with `stdin`); their end closes it. */
  stdin?: StdinSource;
  /** The main command's id, for `resizeExec`. */
  onExec?(execId: string): void;
  /** Detaches (the command runs on). */
  signal?: AbortSignal;
}
export interface ConsoleOptions {
  /** What the guest writes to its serial console, as it comes. */
  onData: (data: Buffer) => void | Promise<void>;
  /** Detaches, as `close()` does. */
  signal?: AbortSignal;
}
export interface ConsoleHandle {
  /** Bytes for the guest's serial input (what a shell or getty on ttyS0 reads). */
  write(data: string | Buffer): void;
  /** Detaches; the VM runs on. */
  close(): void;
  /** Settles when the session is over. */
  readonly ended: Promise<void>;
}
export interface LogsOptions extends RequestOptions {
  /** Keep going with new lines until the VM stops. */
  follow?: boolean;
  /** Only the last this many lines of what is kept. */
  tail?: number;
  /** Only entries at or after this time. */
  since?: Date;
  /** Only entries before this time. */
  until?: Date;
}

function runRequest({ commandTimeoutMs, ...spec }: VmSpec): RunRequest {
  return commandTimeoutMs === undefined ? spec : { ...spec, timeoutSec: toSeconds(commandTimeoutMs) };
}

/** VMs: records, lifecycle, commands and logs. */
export class VmsClient {
  constructor(private readonly transport: Transport) {}

  async list(opts: VmListOptions = {}): Promise<Vm[]> {
    const all = await this.transport.call(vms.list, { query: { all: opts.all } }, opts);
    return opts.labels?.length ? all.filter((vm) => matchesLabels(vm.spec.labels, opts.labels!)) : all;
  }

  /** By id, name or unique id prefix (3+ characters). */
  get(ref: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(vms.get, { params: { ref } }, opts);
  }

  /** Creates and boots a VM that keeps running (its main command, if any, runs in the background). */
  create(spec: VmSpec, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(vms.create, { body: runRequest(spec) }, opts);
  }

  /**
   * `cell run`: boots a VM, runs its command with output streamed to the handlers as it arrives,
   * then stops the VM (and removes it with `autoRemove`). Aborting kills the command and stops the
   * VM; the promise then rejects with the signal's reason.
   */
  run(spec: VmSpec, opts: VmRunOptions = {}): Promise<CommandResult & { vm: Vm }> {
    return runStream(this.transport, this.transport.stream(vms.run, { body: runRequest(spec) }, opts), opts);
  }

  /**
   * `cell attach`: the running main command's output from now on, and (when it was started with
   * `stdin`) `stdin` to it; resolves with how it ended, or null when `signal` detached first (it
   * runs on; a detach leaves its stdin open, the end of `stdin` closes it).
   */
  async attach(ref: string, opts: AttachOptions = {}): Promise<CommandResult | null> {
    let exit: CommandResult | null = null;
    let upload: Promise<unknown> | undefined;
    try {
      for await (const event of this.transport.stream(vms.attach, { params: { ref } }, { signal: opts.signal })) {
        if (event.type === 'stdout') await opts.onStdout?.(Buffer.from(event.data, 'base64'));
        else if (event.type === 'stderr') await opts.onStderr?.(Buffer.from(event.data, 'base64'));
        else if (event.type === 'exec') {
          opts.onExec?.(event.execId);
          if (opts.stdin && !upload) {
            // Cut off by a detach (not ended): celld keeps the command's stdin open.
            upload = this.transport.upload(vms.execStdin, { params: { execId: event.execId } }, opts.stdin as AsyncIterable<Buffer | string>, { signal: opts.signal }).catch(() => {});
          }
        } else if (event.type === 'exit') exit = { exitCode: event.exitCode, signal: event.signal, timedOut: event.timedOut, durationMs: event.durationMs };
      }
    } catch (err) {
      if (!opts.signal?.aborted) throw err;
    }
    return exit;
  }

  /**
   * `cell update`: its time limits, running or not. `ttlMs` runs from now (E2B's setTimeout);
   * 0 or null turns a limit off; absent fields stay as they are.
   */
  update(ref: string, limits: UpdateRequest, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(vms.update, { params: { ref }, body: limits }, opts);
  }

  /**
   * Stops its vCPUs (QEMU and its RAM stay); exec fails with `vm_paused` until `unpause`. With
   * `toDisk` its memory goes to disk and its QEMU ends (state `suspended`); `unpause` restores it.
   */
  pause(ref: string, opts: RequestOptions & { toDisk?: boolean } = {}): Promise<Vm> {
    return this.transport.call(vms.pause, { params: { ref }, body: opts.toDisk ? { toDisk: true } : {} }, opts);
  }

  unpause(ref: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(vms.unpause, { params: { ref } }, opts);
  }

  /** Boots a stopped VM again, its disk as it was left. */
  start(ref: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(vms.start, { params: { ref } }, opts);
  }

  /** SIGTERM to every process, SIGKILL after `graceMs`, power off. */
  stop(ref: string, opts: VmStopOptions = {}): Promise<Vm> {
    return this.transport.call(vms.stop, { params: { ref }, body: opts.graceMs === undefined ? {} : { timeoutSec: toSeconds(opts.graceMs) } }, opts);
  }

  remove(ref: string, opts: RemoveOptions = {}): Promise<void> {
    return this.transport.call(vms.remove, { params: { ref }, query: { force: opts.force } }, opts);
  }

  /**
   * Runs a command in a running VM, output to the handlers as it arrives; resolves with how it
   * ended (a non-zero exit is a result, not an error). Aborting kills the command.
   */
  exec(ref: string, spec: ExecSpec, opts: ExecOptions = {}): Promise<CommandResult> {
    const { commandTimeoutMs, ...rest } = spec;
    const body = { ...rest, ...(commandTimeoutMs !== undefined ? { timeoutSec: toSeconds(commandTimeoutMs) } : {}), ...(opts.stdin ? { stdin: true } : {}) };
    return execStream(this.transport, this.transport.stream(vms.exec, { params: { ref }, body }, opts), opts);
  }

  /** A new size for the terminal of a running exec started with `tty` (its id from `onExec`). */
  resizeExec(execId: string, size: { cols: number; rows: number }, opts: RequestOptions = {}): Promise<void> {
    return this.transport.call(vms.execResize, { params: { execId }, body: { cols: size.cols, rows: size.rows } }, opts);
  }

  /**
   * `cell wait`: resolves with the VM once it has stopped (its `exit` says how), or with
   * `until: 'healthy'` once its health check passed. Rejects with code `timeout` after `timeoutMs`,
   * and with `vm_not_running` when it stops before it is healthy.
   */
  async wait(ref: string, opts: WaitOptions = {}): Promise<Vm> {
    const body = { ...(opts.until ? { until: opts.until } : {}), ...(opts.timeoutMs !== undefined ? { timeoutMs: Math.max(0, Math.round(opts.timeoutMs)) } : {}) };
    // celld keeps the time limit, so a late VM is its `timeout` error with the last probe, not a dropped call.
    for await (const event of this.transport.stream(vms.wait, { params: { ref }, body }, { signal: opts.signal })) {
      if (event.type === 'health') opts.onHealth?.(event.vm);
      else return event.vm;
    }
    throw new CellError(ErrorCodes.INTERNAL, `celld ended the wait for VM ${ref} without an answer`);
  }

  /**
   * `cell console`: the VM's serial console, one session per VM at a time. `onData` gets what the
   * guest writes there from now on; `write` sends bytes to its serial input; `close()` detaches
   * (the VM runs on); `ended` settles when the session is over (closed, or the VM stopped).
   */
  async console(ref: string, opts: ConsoleOptions): Promise<ConsoleHandle> {
    const controller = new AbortController();
    const detach = () => controller.abort();
    opts.signal?.addEventListener('abort', detach, { once: true });
    const events = this.transport.stream(vms.console, { params: { ref } }, { signal: controller.signal });
    const first = await events.next();
    if (first.done || first.value.type !== 'attached') {
      controller.abort();
      throw new CellError(ErrorCodes.INTERNAL, `celld opened no console session for VM ${ref}`);
    }
    const input = new PassThrough();
    // A failed upload only loses keystrokes; the output goes on.
    const upload = this.transport.upload(vms.consoleInput, { params: { session: first.value.session } }, input, { endSignal: controller.signal }).catch(() => {});
    const ended = (async () => {
      try {
        for (;;) {
          const next = await events.next();
          if (next.done) return;
          if (next.value.type === 'data') await opts.onData(Buffer.from(next.value.data, 'base64'));
        }
      } catch (err) {
        if (!controller.signal.aborted) throw err;
      } finally {
        input.end();
        controller.abort();
        opts.signal?.removeEventListener('abort', detach);
        await upload;
      }
    })();
    return {
      write: (data) => void input.write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data),
      close: detach,
      ended,
    };
  }

  /** A VM's main-command output: what is there, then (with `follow`) new lines until it stops. */
  async *logs(ref: string, opts: LogsOptions = {}): AsyncGenerator<LogEntry> {
    for await (const event of this.transport.stream(vms.logs, { params: { ref }, query: { follow: opts.follow, tail: opts.tail, since: opts.since?.toISOString(), until: opts.until?.toISOString() } }, opts)) {
      yield { time: event.time, stream: event.stream, text: event.text };
    }
  }

  /**
   * The VM's host-side resource use over one second (`cell stats --no-stream`): its QEMU's CPU %
   * (100 = one core), memory RSS and PSS, disk and network bytes. A stopped VM gets CPU 0 and null
   * memory, disk and network; takes about a second (CPU % needs two readings).
   */
  async stats(ref: string, opts: RequestOptions = {}): Promise<VmStats> {
    for await (const event of this.transport.stream(vms.stats, { params: { ref }, query: {} }, opts)) return event.stats;
    throw new CellError(ErrorCodes.NOT_FOUND, `VM ${ref} was removed`);
  }

  /**
   * A sample every second until `signal` aborts or the VM is removed (`cell stats`); leaving the
   * loop closes the request, and celld stops sampling:
   *
   *   for await (const s of client.vms.statsStream('web', { signal })) console.log(s.cpuPercent);
   */
  async *statsStream(ref: string, opts: RequestOptions = {}): AsyncGenerator<VmStats> {
    for await (const event of this.transport.stream(vms.stats, { params: { ref }, query: { stream: true } }, opts)) yield event.stats;
  }

  /** Every running VM's resource use over the same second (one request, however many VMs). */
  async statsAll(opts: RequestOptions = {}): Promise<VmStats[]> {
    const rows: VmStats[] = [];
    for await (const event of this.transport.stream(vms.statsAll, { query: {} }, opts)) rows.push(event.stats);
    return rows;
  }

  /**
   * Every running VM's row each second, until `signal` aborts (the dashboard's sparklines); VMs
   * that start join a second later. Rows of one second come one after another, each with its VM's id.
   */
  async *statsAllStream(opts: RequestOptions = {}): AsyncGenerator<VmStats> {
    for await (const event of this.transport.stream(vms.statsAll, { query: { stream: true } }, opts)) yield event.stats;
  }
}
