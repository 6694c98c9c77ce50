import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * One celld per CELL_HOME: an exclusively created pid file. A pid file whose process is gone (or is
 * not a celld any more) is stale and taken over.
 */
export function acquireDaemonLock(path: string): () => void {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      return () => {
        try {
          if (readFileSync(path, 'utf8').trim() === String(process.pid)) rmSync(path);
        } catch {
          /* already gone */
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(readFileSync(path, 'utf8').trim());
      if (holder && isDaemon(holder)) {
        throw new CellError(ErrorCodes.CONFLICT, `celld is already running for this CELL_HOME (pid ${holder})`, { pid: holder });
      }
      rmSync(path, { force: true });
    }
  }
  throw new CellError(ErrorCodes.CONFLICT, `cannot take the daemon lock ${path}`);
}

function isDaemon(pid: number): boolean {
  try {
    return /celld|server\/main/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return false;
  }
}
