import type { Command } from 'commander';
import { CellClient } from '../sdk/client.js';
import { EXIT_FAILURE, EXIT_SIGINT, EXIT_SIGTERM, reportError } from './errors.js';

/** The client for this invocation: --home wins over CELL_HOME; celld starts on demand. */
export function connect(cmd: Command): Promise<CellClient> {
  const home = (cmd.optsWithGlobals() as { home?: string }).home;
  // No ping first: the command's own first request starts celld if it has to (one round trip less).
  return CellClient.connect({ home, lazy: true });
}

/** Writes a chunk; the promise (only when the pipe is full) holds the stream back until it drains. */
function writeTo(out: NodeJS.WriteStream) {
  return (chunk: Buffer): Promise<void> | void => {
    if (out.write(chunk)) return;
    return new Promise((resolve) => {
      const done = () => {
        out.off('drain', done);
        out.off('error', done);
        resolve();
      };
      out.once('drain', done);
      out.once('error', done);
    });
  };
}

/** Streams a guest command's output to ours, raw bytes, as it arrives. */
export const passThrough = {
  onStdout: writeTo(process.stdout),
  onStderr: writeTo(process.stderr),
};

export interface Interrupt {
  signal: AbortSignal;
  /** 130 after SIGINT, 143 after SIGTERM, null when not interrupted. */
  code(): number | null;
  dispose(): void;
}

/** Turns Ctrl-C / SIGTERM into an abort (celld then kills the command) and the usual exit code. */
export function interruptible(): Interrupt {
  const controller = new AbortController();
  let code: number | null = null;
  const on = (exit: number) => () => {
    code ??= exit;
    controller.abort();
  };
  const onInt = on(EXIT_SIGINT);
  const onTerm = on(EXIT_SIGTERM);
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  return {
    signal: controller.signal,
    code: () => code,
    dispose: () => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}

/**
 * A command that streams from celld until it ends (build, template build): connects, turns Ctrl-C
 * into an abort, reports a failure as one line; resolves with the exit status to use.
 */
export async function streamed(cmd: Command, work: (client: CellClient, signal: AbortSignal) => Promise<number>): Promise<number> {
  const interrupt = interruptible();
  let client: CellClient | undefined;
  try {
    client = await connect(cmd);
    return await work(client, interrupt.signal);
  } catch (err) {
    const interrupted = interrupt.code();
    if (interrupted !== null) return interrupted;
    reportError(err);
    return EXIT_FAILURE;
  } finally {
    interrupt.dispose();
    client?.close();
  }
}

/** The exit status for a guest command's result, with a line on stderr after a timeout. */
export function commandExit(result: { exitCode: number; signal: number | null; timedOut: boolean; oomKilled?: boolean }, timeoutSec?: number): number {
  if (result.timedOut) {
    process.stderr.write(`cell: command timed out after ${timeoutSec ?? '?'} s\n`);
    return 124;
  }
  if (result.oomKilled) process.stderr.write("cell: the command was killed by the guest's OOM killer (the VM ran out of memory; see --memory)\n");
  return exitStatus(result);
}

/** Shell convention: 128+N when killed by signal N, else the command's own code. */
export function exitStatus(result: { exitCode: number; signal: number | null }): number {
  if (result.signal !== null && result.signal > 0) return 128 + result.signal;
  return result.exitCode;
}
