import { InvalidArgumentError } from 'commander';
import { toCellError } from '../domain/errors.js';

/** Exit codes of `cell` itself (a command's own code passes through `run` and `exec`). */
export const EXIT_FAILURE = 1;
/** Like docker run: the VM could not be created or booted, the command never ran. */
export const EXIT_RUN_FAILED = 125;

/** Prints one `error: ...` line (plus the serial console tail for boot failures). */
export function reportError(err: unknown): void {
  const e = toCellError(err);
  process.stderr.write(`error: ${e.message.split('\n')[0]}\n`);
  const tail = e.details?.serialTail;
  if (typeof tail === 'string' && tail.trim()) {
    process.stderr.write(`--- serial console (last lines) ---\n${tail.trimEnd()}\n`);
  }
}

/** Parsers for numeric options, with messages that say what is expected. */
export function wholeNumber(flag: string, unit: string) {
  return (value: string): number => {
    if (!/^\d+$/.test(value)) throw new InvalidArgumentError(`${flag} must be a whole number${unit ? ` of ${unit}` : ''}, not "${value}"`);
    return Number(value);
  };
}

export function seconds(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n)) throw new InvalidArgumentError(`${flag} must be a number of seconds, not "${value}"`);
    return n;
  };
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
