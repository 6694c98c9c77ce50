import type { ExecTerminal } from './exec-terminal.js';

/** Where a guest command's output goes as it is produced. */
export interface OutputSink {
  stdout(chunk: Buffer): void;
  stderr(chunk: Buffer): void;
  /**
   * A promise while the reader is behind (the command is then held back until it settles: its
   * exec gets no output credit, other execs on the VM go on), else undefined. Sinks that cannot
   * fall behind leave it out.
   */
  behind?(): Promise<void> | undefined;
}

/** Output nobody reads. */
export const NULL_SINK: OutputSink = { stdout() {}, stderr() {} };

export interface ExecOptions {
  cmd: string[];
  env?: string[];
  workingDir?: string;
  /** `uid[:gid]` as numbers; names are not resolved yet (the agent runs no NSS). */
  user?: string;
  /** Seconds; 0 or undefined = no limit. */
  timeoutSec?: number;
  /** Feed stdin from these chunks; undefined = /dev/null. */
  stdin?: AsyncIterable<Buffer>;
  /** Run on a pseudo-terminal of this size, resized through it (exec-runner.ts). */
  terminal?: ExecTerminal;
  signal?: AbortSignal;
}

export interface ExecResult {
  /** Shell convention: the exit status, 128+N when killed by signal N, 124 after a timeout. */
  exitCode: number;
  signal: number | null;
  timedOut: boolean;
  durationMs: number;
  /** Present (true) when the guest's OOM killer ended the process. */
  oomKilled?: boolean;
}

export const TIMEOUT_EXIT_CODE = 124;
