import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { CellPaths } from '../domain/paths.js';
import { stripControl } from '../domain/terminal-text.js';

/** celld's exit status when another celld already serves this CELL_HOME (see src/server/main.ts). */
export const DAEMON_ALREADY_RUNNING_EXIT = 3;

/**
 * Starts celld for a CELL_HOME, detached (it outlives this process), with its output appended to
 * celld.log. From TypeScript sources (a checkout without `npm run build`) it runs through tsx.
 */
export function startDaemon(paths: CellPaths, env: NodeJS.ProcessEnv = process.env): ChildProcess {
  // Private from the start (celld narrows an existing home itself, see Engine.prepareHome).
  mkdirSync(paths.home, { recursive: true, mode: 0o700 });
  const fromSource = import.meta.url.endsWith('.ts');
  const entry = fileURLToPath(new URL(`../server/main.${fromSource ? 'ts' : 'js'}`, import.meta.url));
  const args = fromSource ? ['--import', 'tsx', entry] : [entry];
  const log = openSync(paths.daemonLog, 'a', 0o600);
  try {
    const child = spawn(process.execPath, args, {
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...env, CELL_HOME: paths.home },
    });
    child.on('error', () => {}); // reported through the log tail when the socket never answers
    child.unref();
    return child;
  } finally {
    closeSync(log);
  }
}

export function daemonLogTail(paths: CellPaths, lines = 10): string {
  try {
    // celld's stderr lands here too: no escape sequences to the user's terminal.
    return stripControl(readFileSync(paths.daemonLog, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** The error for a celld that did not come up: the last log line in the message, more in details. */
export function daemonStartFailed(paths: CellPaths, why: string): CellError {
  const tail = daemonLogTail(paths);
  const last = tail.split('\n').pop()?.trim();
  return new CellError(
    ErrorCodes.DAEMON_UNAVAILABLE,
    `celld did not start: ${why} (log: ${paths.daemonLog})${last ? `; last log line: ${last}` : ''}`,
    { logTail: tail, log: paths.daemonLog },
  );
}
