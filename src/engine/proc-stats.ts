import { readFile } from 'node:fs/promises';

/**
 * What the host's kernel says about one VMM process (`cell stats`): its CPU time from
 * /proc/PID/stat and its memory from /proc/PID/smaps_rollup. Pure parsers plus one reader.
 */

/** The unit of utime and stime in /proc/PID/stat: USER_HZ, 100 on every Linux ABI (the kernel converts to it). */
export const USER_HZ = 100;

export interface ProcessMemory {
  /** Resident pages, shared ones counted in full. */
  rssBytes: number;
  /** Proportional share: a page shared by N processes (forks mapping one snapshot's RAM) counts 1/N. */
  pssBytes: number;
}

export interface ProcessSample {
  /** User plus system CPU time of all its threads, in seconds. */
  cpuSeconds: number;
  /** Null when smaps_rollup could not be read (no permission to look into the process). */
  memory: ProcessMemory | null;
}

/**
 * utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds. The command name (field 2)
 * is in parentheses and may itself hold spaces and parentheses, so fields are counted from the last `)`.
 */
export function parseCpuSeconds(stat: string): number {
  const close = stat.lastIndexOf(')');
  if (close < 0) throw new Error('not a /proc/PID/stat line');
  // After ") ": field 3 (state) is index 0, so field N is index N - 3.
  const fields = stat.slice(close + 2).trim().split(/\s+/);
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isSafeInteger(utime) || !Number.isSafeInteger(stime)) throw new Error('a /proc/PID/stat line without utime and stime');
  return (utime + stime) / USER_HZ;
}

/** `Rss:` and `Pss:` of /proc/PID/smaps_rollup (kB there), in bytes; null when either is missing. */
export function parseSmapsRollup(text: string): ProcessMemory | null {
  const kb = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : null;
  };
  const rss = kb('Rss');
  const pss = kb('Pss');
  return rss === null || pss === null ? null : { rssBytes: rss, pssBytes: pss };
}

/**
 * CPU use between two samples as docker reports it: the share of one core the process used over
 * the interval (100 = one core busy all along; two busy vCPUs approach 200). 0 for an empty or
 * backwards interval, and never negative.
 */
export function cpuPercent(prev: { cpuSeconds: number; atMs: number }, next: { cpuSeconds: number; atMs: number }): number {
  const wallSeconds = (next.atMs - prev.atMs) / 1000;
  if (!(wallSeconds > 0)) return 0;
  return Math.max(0, ((next.cpuSeconds - prev.cpuSeconds) / wallSeconds) * 100);
}

/** A sample of process `pid`; null when it is gone. */
export async function readProcess(pid: number): Promise<ProcessSample | null> {
  let stat: string;
  try {
    stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const rollup = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8').catch(() => null);
  return { cpuSeconds: parseCpuSeconds(stat), memory: rollup === null ? null : parseSmapsRollup(rollup) };
}
