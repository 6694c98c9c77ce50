import type { StreamEvent, Vm } from '../api/schemas.js';
import { Routes } from '../api/routes.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Transport } from './transport.js';

/** How a command ended. `exitCode` follows the shell: 124 after a timeout, 128+N for signal N. */
export interface CommandResult {
  exitCode: number;
  signal: number | null;
  timedOut: boolean;
  durationMs: number;
}

export interface OutputHandlers {
  /**
   * Called with each chunk as it arrives. A handler may return a promise: the stream waits for it
   * before reading on (backpressure for a slow consumer).
   */
  onStdout?(chunk: Buffer): void;
  onStderr?(chunk: Buffer): void;
  signal?: AbortSignal;
}

export type SetupEvent = Extract<StreamEvent, { type: 'progress' }>;
export type PullEvent = Extract<StreamEvent, { type: 'pull' }>['event'];
export type LogEntry = Omit<Extract<StreamEvent, { type: 'log' }>, 'type'>;

export interface RunHandlers extends OutputHandlers {
  onCreated?(vm: Vm): void;
  /** The VM booted; the command starts now. */
  onRunning?(vm: Vm): void;
  /** Host set-up done on demand before the first boot (when celld reports it). */
  onProgress?(e: SetupEvent): void;
  /** An image pulled on demand (when celld reports it). */
  onPull?(e: PullEvent): void;
}

export interface ExecHandlers extends OutputHandlers {
  /** Bytes for the command's stdin; its end closes the command's stdin. Read until the command ends. */
  stdin?: AsyncIterable<Buffer | string> | NodeJS.ReadableStream;
}

/** Hands stdout/stderr events to their handler (false for other events). */
export async function deliverOutput(event: StreamEvent, handlers: OutputHandlers): Promise<boolean> {
  let pending: unknown;
  if (event.type === 'stdout') pending = handlers.onStdout?.(Buffer.from(event.data, 'base64'));
  else if (event.type === 'stderr') pending = handlers.onStderr?.(Buffer.from(event.data, 'base64'));
  else return false;
  if (typeof (pending as PromiseLike<unknown> | undefined)?.then === 'function') await pending;
  return true;
}

function result(e: CommandResult): CommandResult {
  return { exitCode: e.exitCode, signal: e.signal, timedOut: e.timedOut, durationMs: e.durationMs };
}

function noExit(what: string): CellError {
  return new CellError(ErrorCodes.INTERNAL, `celld ended the ${what} stream without the command's exit status`);
}

/**
 * Consumes a stream that ends in one result event (`resultType`: actions, builds, template builds):
 * output goes to the handlers, every other event to `onEvent`, and the result event's `result` is
 * returned.
 */
export async function resultStream<T>(
  events: AsyncIterable<StreamEvent>,
  handlers: OutputHandlers,
  resultType: StreamEvent['type'],
  what: string,
  onEvent: (event: StreamEvent) => void,
): Promise<T> {
  let result: T | undefined;
  for await (const event of events) {
    if (await deliverOutput(event, handlers)) continue;
    if (event.type === resultType) result = (event as unknown as { result: T }).result;
    onEvent(event);
  }
  if (result === undefined) throw new CellError(ErrorCodes.INTERNAL, `celld ended the ${what} stream without a result`);
  return result;
}

/** Consumes the event stream of POST /v1/vms/run. */
export async function runStream(events: AsyncIterable<StreamEvent>, handlers: RunHandlers): Promise<CommandResult & { vm: Vm }> {
  let exit: CommandResult | undefined;
  let vm: Vm | undefined;
  for await (const event of events) {
    if (await deliverOutput(event, handlers)) continue;
    switch (event.type) {
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
        vm = event.vm ?? vm;
        break;
    }
  }
  if (!exit || !vm) throw noExit('run');
  return { ...exit, vm };
}

/** Consumes the event stream of POST /v1/vms/:ref/exec, sending stdin once celld names the exec. */
export async function execStream(transport: Transport, events: AsyncIterable<StreamEvent>, handlers: ExecHandlers): Promise<CommandResult> {
  let exit: CommandResult | undefined;
  let upload: Promise<unknown> | undefined;
  const stopUpload = new AbortController();
  try {
    for await (const event of events) {
      if (await deliverOutput(event, handlers)) continue;
      if (event.type === 'exec' && handlers.stdin && !upload) {
        const source = handlers.stdin as AsyncIterable<Buffer | string>;
        // A failed upload shows in the command's behaviour (it sees EOF); never crash on it.
        upload = transport.upload(Routes.execStdin(event.execId), source, stopUpload.signal).catch(() => {});
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
