import { spawn } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { CellPaths } from '../domain/paths.js';

/**
 * Starts celld for a CELL_HOME, detached, with its output in celld.log. Running from TypeScript
 * sources (a checkout without `npm run build`) starts it through tsx.
 */
export function startDaemon(paths: CellPaths): void {
  mkdirSync(paths.home, { recursive: true });
  const fromSource = import.meta.url.endsWith('.ts');
  const entry = fileURLToPath(new URL(`../server/main.${fromSource ? 'ts' : 'js'}`, import.meta.url));
  const args = fromSource ? ['--import', 'tsx', entry] : [entry];
  const log = openSync(paths.daemonLog, 'a');
  try {
    const child = spawn(process.execPath, args, {
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...process.env, CELL_HOME: paths.home },
    });
    child.unref();
  } finally {
    closeSync(log);
  }
}

export function daemonLogTail(paths: CellPaths, lines = 5): string {
  try {
    return readFileSync(paths.daemonLog, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

export function daemonStartFailed(paths: CellPaths): CellError {
  const tail = daemonLogTail(paths);
  return new CellError(
    ErrorCodes.DAEMON_UNAVAILABLE,
    `celld did not start (see ${paths.daemonLog})${tail ? `: ${tail.split('\n').pop()}` : ''}`,
    { logTail: tail },
  );
}
