import type { Command } from 'commander';
import type { CellClient } from '../sdk/client.js';
import { connect } from './context.js';
import { EXIT_FAILURE, isCommanderExit, reportError } from './errors.js';

/**
 * Wraps a command's work: connects to celld (starting it if needed), reports any failure as one
 * `error:` line with exit code 1, and always releases the connection.
 */
export function withClient<A extends unknown[]>(work: (client: CellClient, ...args: A) => Promise<void>) {
  return async (...args: [...A, Command]): Promise<void> => {
    const cmd = args[args.length - 1] as Command;
    let client: CellClient | undefined;
    try {
      client = await connect(cmd);
      await work(client, ...(args.slice(0, -1) as A));
    } catch (err) {
      if (isCommanderExit(err)) throw err; // help or a usage error: commander has said it
      reportError(err);
      process.exitCode = EXIT_FAILURE;
    } finally {
      client?.close();
    }
  };
}

/** Runs `fn` for each ref, reporting failures per ref; exit 1 if any failed (like docker). */
export async function forEachRef(refs: string[], fn: (ref: string) => Promise<void>): Promise<void> {
  for (const ref of refs) {
    try {
      await fn(ref);
    } catch (err) {
      reportError(err);
      process.exitCode = EXIT_FAILURE;
    }
  }
}
