import { readFileSync } from 'node:fs';
import { open, readFile, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { ProgressFn } from './types.js';

/**
 * One set-up at a time per cache dir. Outputs are published by atomic renames, so two concurrent
 * set-ups could not corrupt each other anyway; the lock exists so the second one waits and then
 * finds everything cached instead of downloading and building the same things again.
 *
 * The lock is `<cache>/setup.lock`, created with O_EXCL and holding the owner's pid and process
 * start time. A lock whose owner is gone (or whose pid now names another process) is stale and
 * broken; breaking goes through a second O_EXCL file so two waiters cannot both break it and then
 * remove each other's fresh lock.
 */
const POLL_MS = 50;
const DEFAULT_WAIT_MS = 20 * 60 * 1000;
/** A lock file still empty after this long was left by a process that died while creating it. */
const EMPTY_LOCK_STALE_MS = 5000;
const BREAKER_STALE_MS = 10_000;

interface LockOwner {
  pid: number;
  start: string;
}

export async function acquireSetupLock(
  cacheDir: string,
  opts: { onProgress?: ProgressFn; timeoutMs?: number } = {},
): Promise<() => Promise<void>> {
  const path = join(cacheDir, 'setup.lock');
  const me: LockOwner = { pid: process.pid, start: processStart(process.pid) ?? '' };
  const mine = JSON.stringify(me);
  const deadline = Date.now() + (opts.timeoutMs ?? DEFAULT_WAIT_MS);
  let waitingFor: number | null = null;

  for (;;) {
    try {
      const fh = await open(path, 'wx', 0o644);
      try {
        await fh.writeFile(mine);
      } finally {
        await fh.close();
      }
      if (waitingFor !== null) opts.onProgress?.({ step: 'lock', status: 'done' });
      return async () => {
        if ((await readFile(path, 'utf8').catch(() => '')) === mine) await unlink(path).catch(() => {});
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }

    const holder = await readOwner(path);
    if (holder === 'gone') continue;
    if (holder === 'stale') {
      await breakStaleLock(path);
      continue;
    }
    if (holder !== 'young' && waitingFor !== holder.pid) {
      waitingFor = holder.pid;
      opts.onProgress?.({ step: 'lock', status: 'start', detail: `waiting for the set-up running in process ${holder.pid}` });
    }
    if (Date.now() > deadline) {
      throw new CellError(
        ErrorCodes.SETUP_FAILED,
        `another set-up holds ${path}${waitingFor ? ` (process ${waitingFor})` : ''} for too long; remove the file if that process is not running`,
      );
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** 'gone': the file disappeared; 'stale': its owner is dead; 'young': being written right now. */
async function readOwner(path: string): Promise<LockOwner | 'gone' | 'stale' | 'young'> {
  let text: string;
  let ageMs: number;
  try {
    text = await readFile(path, 'utf8');
    ageMs = Date.now() - (await stat(path)).mtimeMs;
  } catch {
    return 'gone';
  }
  let owner: LockOwner;
  try {
    owner = JSON.parse(text) as LockOwner;
  } catch {
    return ageMs > EMPTY_LOCK_STALE_MS ? 'stale' : 'young';
  }
  const start = processStart(owner.pid);
  return start !== null && start === owner.start ? owner : 'stale';
}

async function breakStaleLock(path: string): Promise<void> {
  const breaker = `${path}.break`;
  try {
    await (await open(breaker, 'wx')).close();
  } catch {
    // Someone else is breaking it; or a breaker died mid-way long ago.
    const age = await stat(breaker).then((s) => Date.now() - s.mtimeMs, () => 0);
    if (age > BREAKER_STALE_MS) await unlink(breaker).catch(() => {});
    await new Promise((r) => setTimeout(r, POLL_MS));
    return;
  }
  try {
    // Re-check under the breaker: the lock may have been replaced by a live owner meanwhile.
    if ((await readOwner(path)) === 'stale') await unlink(path).catch(() => {});
  } finally {
    await unlink(breaker).catch(() => {});
  }
}

/** The process's start time in clock ticks since boot (/proc/PID/stat field 22), or null if it is not running. */
function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') return null;
    return fields[19] ?? null;
  } catch {
    return null;
  }
}
