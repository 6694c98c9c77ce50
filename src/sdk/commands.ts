import type { ExitEvent, OutputEvent, ProgressEvent, PullProgress } from '../api/common.js';
import { Api } from '../api/routes.js';
import type { ExecEvent, LogEvent, RunEvent, Vm } from '../api/vms.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { OutputHandlers } from './options.js';
import type { Transport } from './transport.js';

/** How a command ended. `exitCode` follows the shell: 124 after a timeout, 128+N for signal N. */
export interface CommandResult {
  exitCode: number;
  signal: number | null;
  timedOut: boolean;
  durationMs: number;
  /** True when the guest kernel's OOM killer ended the process (exitCode 137): the VM ran out of memory. */
  oomKilled?: boolean;
}

export type SetupEvent = ProgressEvent;
export type PullEvent = PullProgress;
export type LogEntry = Omit<LogEvent, 'type'>;

/** Bytes for a command's stdin; the end of the iterable closes it. Read until the command ends. */
export type StdinSource = AsyncIterable<Buffer | string> | NodeJS.ReadableStream;

export interface RunEventHandlers extends OutputHandlers {
  onCreated?(vm: Vm): void;
  /** The VM booted; the command starts now. */
  onRunning?(vm: Vm): void;
  /** Host set-up done on demand before the first boot (when celld reports it). */
  onProgress?(e: SetupEvent): void;
  /** An image pulled on demand (when celld reports it). */
  onPull?(e: PullEvent): void;
  /** With `stdin` (run spec) set: the bytes for the main command's stdin; their end closes it. */
  stdin?: StdinSource;
  /** With `stdin` or `tty`: the main command's id, for `resizeExec`. */
  onExec?(execId: string): void;
}

function isOutput<E extends { type: string }>(event: E | OutputEvent): event is OutputEvent {
  return event.type === 'stdout' || event.type === 'stderr';
}

/** Hands stdout/stderr events to their handler (false for other events). */
export async function deliverOutput(event: { type: string }, handlers: OutputHandlers): Promise<boolean> {
  if (!isOutput(event)) return false;
  await (event.type === 'stdout' ? handlers.onStdout : handlers.onStderr)?.(Buffer.from(event.data, 'base64'));
  return true;
}

function result(e: ExitEvent): CommandResult {
  return { exitCode: e.exitCode, signal: e.signal, timedOut: e.timedOut, durationMs: e.durationMs, ...(e.oomKilled ? { oomKilled: true } : {}) };
}

function noExit(what: string): CellError {
  return new CellError(ErrorCodes.INTERNAL, `celld ended the ${what} stream without the command's exit status`);
}

/**
 * Consumes a stream that ends in one result event (actions, builds, template builds): output
 * goes to the handlers, every other event to `onEvent`, and what `resultOf` finds is returned.
 */
export async function resultStream<E extends { type: string }, T>(
  events: AsyncIterable<E>,
  handlers: OutputHandlers,
  what: string,
  resultOf: (event: Exclude<E, OutputEvent>) => T | undefined,
  onEvent: (event: Exclude<E, OutputEvent>) => void,
): Promise<T> {
  let found: T | undefined;
  for await (const event of events as AsyncIterable<Exclude<E, OutputEvent> | OutputEvent>) {
    if (isOutput(event)) {
      await deliverOutput(event, handlers);
      continue;
    }
    found = resultOf(event) ?? found;
    onEvent(event);
  }
  if (found === undefined) throw new CellError(ErrorCodes.INTERNAL, `celld ended the ${what} stream without a result`);
  return found;
}

/** Consumes the event stream of an attached run (POST /v1/vms/run). */
export async function runStream(transport: Transport, events: AsyncIterable<RunEvent>, handlers: RunEventHandlers): Promise<CommandResult & { vm: Vm }> {
  let exit: CommandResult | undefined;
  let vm: Vm | undefined;
  let upload: Promise<unknown> | undefined;
  const stopUpload = new AbortController();
  try {
    for await (const event of events) {
      if (await deliverOutput(event, handlers)) continue;
      switch (event.type) {
        case 'exec':
          handlers.onExec?.(event.execId);
          if (handlers.stdin && !upload) {
            // A failed upload shows in the command's behaviour (it sees EOF); never crash on it.
            upload = transport.upload(Api.vms.execStdin, { params: { execId: event.execId } }, handlers.stdin as AsyncIterable<Buffer | string>, { endSignal: stopUpload.signal }).catch(() => {});
          }
          break;
        case 'created':
          vm = event.vm;
          handlers.onCreated?.(event.vm);
          break;
        case 'running':
          vm = event.vm;
          handlers.onRunning?.(event.vm);
          break;
        case 'progress':
          handlers.onProgress?.(event);
          break;
        case 'pull':
          handlers.onPull?.(event.event);
          break;
        case 'exit':
          exit = result(event);
          break;
        case 'done':
          vm = event.vm;
          break;
      }
    }
  } finally {
    stopUpload.abort();
    await upload;
  }
  if (!exit || !vm) throw noExit('run');
  return { ...exit, vm };
}

/** Consumes the event stream of an exec, sending `stdin` once celld names the exec. */
export async function execStream(
  transport: Transport,
  events: AsyncIterable<ExecEvent>,
  handlers: OutputHandlers & { stdin?: StdinSource; onExec?(execId: string): void },
): Promise<CommandResult> {
  let exit: CommandResult | undefined;
  let upload: Promise<unknown> | undefined;
  const stopUpload = new AbortController();
  try {
    for await (const event of events) {
      if (await deliverOutput(event, handlers)) continue;
      if (event.type === 'exec') handlers.onExec?.(event.execId);
      if (event.type === 'exec' && handlers.stdin && !upload) {
        const source = handlers.stdin as AsyncIterable<Buffer | string>;
        // A failed upload shows in the command's behaviour (it sees EOF); never crash on it.
        upload = transport
          .upload(Api.vms.execStdin, { params: { execId: event.execId } }, source, { endSignal: stopUpload.signal })
          .catch(() => {});
      } else if (event.type === 'exit') exit = result(event);
    }
  } finally {
    // The command has ended (or we gave up on it): stop reading its stdin source.
    stopUpload.abort();
    await upload;
  }
  if (!exit) throw noExit('exec');
  return exit;
}
