import { toCellError } from '../domain/errors.js';

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
