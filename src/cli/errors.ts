import { toCellError } from '../domain/errors.js';
import { parseDuration, parseSince } from '../domain/duration.js';

/** Exit codes of `cell` itself (a guest command's own code passes through `run` and `exec`). */
export const EXIT_FAILURE = 1;
/** Like docker run: cell could not start the command (bad flags, the VM failed to boot, ...). */
export const EXIT_RUN_FAILED = 125;
export const EXIT_SIGINT = 130;
export const EXIT_SIGTERM = 143;

/** Bad command-line input, found before anything was sent to celld. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A commander parse outcome (help shown, unknown option, ...): it has already printed what to say. */
export function isCommanderExit(err: unknown): err is { code: string; exitCode: number } {
  const e = err as { code?: unknown; exitCode?: unknown } | null;
  return typeof e?.code === 'string' && e.code.startsWith('commander.') && typeof e.exitCode === 'number';
}

/** Prints one `error: ...` line (plus the serial console tail for boot failures). */
export function reportError(err: unknown): void {
  const message = err instanceof UsageError ? err.message : toCellError(err).message;
  process.stderr.write(`error: ${message.split('\n')[0]}\n`);
  const tail = toCellError(err).details?.serialTail;
  if (typeof tail === 'string' && tail.trim()) {
    process.stderr.write(`--- serial console (last lines) ---\n${tail.trimEnd()}\n`);
  }
}

/** Option parser: a whole number, e.g. `--memory` in MiB. */
export function wholeNumber(flag: string, unit = '') {
  return (value: string): number => {
    if (!/^\d+$/.test(value.trim())) throw new UsageError(`${flag} must be a whole number${unit ? ` of ${unit}` : ''}, not "${value}"`);
    return Number(value);
  };
}

/** Option parser: a duration in seconds, fractions allowed. */
export function seconds(flag: string) {
  return (value: string): number => {
    if (!/^\d+(\.\d+)?$/.test(value.trim())) throw new UsageError(`${flag} must be a number of seconds, not "${value}"`);
    return Number(value);
  };
}

/** Option parser: a duration (`30s`, `5m`, `1h30m`, `2d`; a bare number is seconds) as milliseconds. */
export function durationMs(flag: string) {
  return (value: string): number => asUsage(() => parseDuration(value, flag));
}

/** Option parser: a time (RFC 3339, Unix seconds) or a duration ago (`10m`). */
export function pointInTime(flag: string) {
  return (value: string): Date => asUsage(() => parseSince(value, flag));
}

function asUsage<T>(parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    throw new UsageError(toCellError(err).message);
  }
}

/** Seconds from a flag as the SDK's milliseconds (rounded: 1.1 s is 1100 ms, not 1100.0000000000002). */
export function milliseconds(sec: number): number;
export function milliseconds(sec: number | undefined): number | undefined;
export function milliseconds(sec: number | undefined): number | undefined {
  return sec === undefined ? undefined : Math.round(sec * 1000);
}

/** Option parser: a repeatable KEY=VALUE (the daemon checks the rest). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Option parser: one of a fixed set of words. */
export function oneOf(flag: string, choices: readonly string[]) {
  return (value: string): string => {
    if (!choices.includes(value)) throw new UsageError(`${flag} must be one of ${choices.join(', ')}, not "${value}"`);
    return value;
  };
}

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, kb: 1e3, kib: 1024, m: 1024 ** 2, mb: 1e6, mib: 1024 ** 2, g: 1024 ** 3, gb: 1e9, gib: 1024 ** 3, t: 1024 ** 4, tb: 1e12, tib: 1024 ** 4 };

/** Option parser: a size like 500M, 2GiB, 10GB or plain bytes (K/M/G alone are binary units). */
export function byteSize(flag: string) {
  return (value: string): number => {
    const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim());
    const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
    if (!m || unit === undefined) throw new UsageError(`${flag} must be a size like 500M, 2GiB or 1000000 (bytes), not "${value}"`);
    return Math.floor(Number(m[1]) * unit);
  };
}

const AGE_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 };

/** Option parser: an age like 90s, 30m, 12h, 7d or 2w, in seconds. */
export function age(flag: string) {
  return (value: string): number => {
    const m = /^(\d+)\s*([smhdw])$/.exec(value.trim());
    if (!m) throw new UsageError(`${flag} must be an age like 30m, 12h or 7d, not "${value}"`);
    return Number(m[1]) * AGE_UNITS[m[2]!]!;
  };
}

/** `--filter label=KEY[=VALUE]` values as label filters (the only kind there is yet). */
export function labelFilters(filters: readonly string[] | undefined): string[] | undefined {
  if (!filters?.length) return undefined;
  return filters.map((f) => {
    if (!f.startsWith('label=') || f.length === 'label='.length) throw new UsageError(`--filter ${f}: expected label=KEY or label=KEY=VALUE`);
    return f.slice('label='.length);
  });
}
