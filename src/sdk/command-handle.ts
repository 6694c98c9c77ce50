import { PassThrough, type Writable } from 'node:stream';
import type { CommandResult, StdinSource } from './commands.js';
import type { OutputHandlers } from './options.js';

/** A piece of a command's output. */
export interface OutputChunk {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

/** Runs the command: output to `handlers`, stdin from `stdin`, cancelled by `signal`. */
export type CommandStarter = (handlers: OutputHandlers, stdin: StdinSource | undefined, signal: AbortSignal) => Promise<CommandResult>;

/** Chunks an iterator may fall behind by before the command's output is held back. */
const MAX_QUEUED = 16;
/** Bytes kept for a loop that has not started yet; past this the oldest go (a server's endless log). */
const MAX_KEPT_BYTES = 16 * 1024 * 1024;

/**
 * A command running in a sandbox (`sandbox.commands.start`). Its output goes to the onStdout and
 * onStderr callbacks as it arrives and is also kept for `for await (const { stream, data } of
 * handle)`: a loop started late still gets the output from the start (as E2B keeps a command's
 * output), up to its last 16 MiB, and while a loop runs behind, the command's output is held back
 * rather than buffered. With `keepOutput: false` (callbacks only) nothing is kept.
 */
export class CommandHandle implements AsyncIterable<OutputChunk> {
  /** The command's stdin when started with `stdin: true`: write to it, `end()` closes it. */
  readonly stdin: Writable | undefined;
  private readonly controller = new AbortController();
  private readonly finished: Promise<CommandResult>;
  private readonly queue: OutputChunk[] = [];
  private keptBytes = 0;
  private iterating = false;
  private ended = false;
  private failure: unknown;
  private wakeReader: (() => void) | undefined;
  private wakeWriter: (() => void) | undefined;

  constructor(
    start: CommandStarter,
    handlers: OutputHandlers,
    stdin: boolean | StdinSource | undefined,
    signal: AbortSignal | undefined,
    private readonly keepOutput = true,
  ) {
    const pipe = stdin === true ? new PassThrough() : undefined;
    this.stdin = pipe;
    const source = pipe ?? (stdin === true || stdin === false ? undefined : stdin);
    if (signal) {
      if (signal.aborted) this.controller.abort(signal.reason);
      else signal.addEventListener('abort', () => this.controller.abort(signal.reason), { once: true });
    }
    const deliver = (stream: OutputChunk['stream'], callback: ((c: Buffer) => void | Promise<void>) | undefined) => async (data: Buffer) => {
      await callback?.(data);
      await this.enqueue({ stream, data });
    };
    this.finished = start({ onStdout: deliver('stdout', handlers.onStdout), onStderr: deliver('stderr', handlers.onStderr) }, source, this.controller.signal);
    this.finished.then(
      () => this.end(undefined),
      (err: unknown) => this.end(err),
    );
  }

  /** How the command ended (a non-zero exit is a result, not an error). */
  wait(): Promise<CommandResult> {
    return this.finished;
  }

  /** Kills the command (celld kills it when the stream closes); `wait()` then rejects with an AbortError. */
  async kill(): Promise<void> {
    this.controller.abort(new DOMException('the command was killed', 'AbortError'));
    await this.finished.catch(() => {});
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<OutputChunk> {
    this.iterating = true;
    try {
      for (;;) {
        const chunk = this.queue.shift();
        if (chunk) {
          this.keptBytes -= chunk.data.length;
          this.wakeWriter?.();
          yield chunk;
        } else if (this.ended) {
          if (this.failure !== undefined) throw this.failure;
          return;
        } else {
          await new Promise<void>((resolve) => (this.wakeReader = resolve));
        }
      }
    } finally {
      this.iterating = false;
      this.wakeWriter?.();
    }
  }

  /** Queues a chunk for an iterator; holds the output back while an iterator is far behind. */
  private async enqueue(chunk: OutputChunk): Promise<void> {
    if (!this.keepOutput) return;
    this.queue.push(chunk);
    this.keptBytes += chunk.data.length;
    // Nobody reads yet: keep the newest output only, so a long-running command cannot grow this without end.
    while (!this.iterating && this.keptBytes > MAX_KEPT_BYTES && this.queue.length > 1) this.keptBytes -= this.queue.shift()!.data.length;
    this.wakeReader?.();
    while (this.iterating && this.queue.length >= MAX_QUEUED) {
      await new Promise<void>((resolve) => (this.wakeWriter = resolve));
    }
  }

  private end(failure: unknown): void {
    this.ended = true;
    this.failure = failure;
    this.stdin?.end();
    this.wakeReader?.();
  }
}
