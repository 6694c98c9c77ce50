import type { Command } from 'commander';
import { CellClient } from '../sdk/client.js';

/** The client for this invocation: --home wins over CELL_HOME; celld starts on demand. */
export function connect(cmd: Command): Promise<CellClient> {
  const home = (cmd.optsWithGlobals() as { home?: string }).home;
  return CellClient.connect({ home });
}

/** Streams a command's output to ours as it arrives. */
export const passThrough = {
  onStdout: (chunk: Buffer) => void process.stdout.write(chunk),
  onStderr: (chunk: Buffer) => void process.stderr.write(chunk),
};

/** Aborts on Ctrl-C / SIGTERM (celld then kills the command) and reports the conventional code. */
export function interruptible(): { signal: AbortSignal; interruptedCode: () => number | null; dispose: () => void } {
  const controller = new AbortController();
  let code: number | null = null;
  const onInt = () => {
    code = 130;
    controller.abort();
  };
  const onTerm = () => {
    code = 143;
    controller.abort();
  };
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  return {
    signal: controller.signal,
    interruptedCode: () => code,
    dispose: () => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    },
  };
}

/** The exit status `cell` reports for a guest command, with a line for timeouts. */
export function commandExit(result: { exitCode: number; timedOut: boolean }, timeoutSec?: number): number {
  if (result.timedOut) process.stderr.write(`cell: command timed out after ${timeoutSec ?? '?'} s\n`);
  return result.exitCode;
}
