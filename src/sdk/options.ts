/**
 * What every SDK call takes. Durations in the SDK are milliseconds; the wire's seconds
 * (`timeoutSec`, ...) are converted at the call.
 */
export interface RequestOptions {
  /** Cancels the call; for a command, celld kills it. The call rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Gives up on the call after this long (rejects with a `TimeoutError`), like AbortSignal.timeout. */
  timeoutMs?: number;
}

/** Handlers for a command's output, raw bytes as they arrive. */
export interface OutputHandlers {
  /**
   * Called with each chunk as it arrives. A handler may return a promise: the stream waits for it
   * before reading on (backpressure for a slow consumer).
   */
  onStdout?(chunk: Buffer): void | Promise<void>;
  onStderr?(chunk: Buffer): void | Promise<void>;
}

/** The one signal of a call: the caller's, the timeout's, or either. */
export function callSignal(opts: RequestOptions = {}): AbortSignal | undefined {
  const timeout = opts.timeoutMs === undefined ? undefined : AbortSignal.timeout(opts.timeoutMs);
  if (opts.signal && timeout) return AbortSignal.any([opts.signal, timeout]);
  return opts.signal ?? timeout;
}

/** Milliseconds as the wire's seconds (undefined stays undefined). */
export function toSeconds(ms: number | undefined): number | undefined {
  return ms === undefined ? undefined : ms / 1000;
}

/** Milliseconds as the wire's whole seconds, for fields that take integers. */
export function toWholeSeconds(ms: number | undefined): number | undefined {
  return ms === undefined ? undefined : Math.round(ms / 1000);
}
