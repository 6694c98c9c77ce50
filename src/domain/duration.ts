import { CellError, ErrorCodes } from './errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A duration as Docker and Go write them, plus days: `500ms`, `30s`, `1h30m`, `2d`; a bare number is
 * seconds. Returns milliseconds; `what` names the flag in the error.
 */
export function parseDuration(text: string, what: string): number {
  const value = text.trim();
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const parts = /^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/.test(value) ? value.match(/\d+(?:\.\d+)?(?:ms|s|m|h|d)/g) : null;
  if (!parts) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} must be a duration such as 30s, 5m, 1h30m or 2d, not ${JSON.stringify(text)}`);
  let ms = 0;
  for (const part of parts) {
    const [, amount, unit] = /^([\d.]+)(ms|s|m|h|d)$/.exec(part)!;
    ms += Number(amount) * UNIT_MS[unit!]!;
  }
  return Math.round(ms);
}

/**
 * A point in time as `docker logs --since` takes it: an RFC 3339 time (`2026-12-03T10:00:00Z`, a
 * date alone is midnight UTC), Unix seconds (`1764756000`), or a duration before `now` (`10m`).
 */
export function parseSince(text: string, what: string, now = Date.now()): Date {
  const value = text.trim();
  if (/^\d{9,}(\.\d+)?$/.test(value)) return new Date(Number(value) * 1000);
  if (/^\d{4}-\d{2}-\d{2}/.test(value)) {
    const at = Date.parse(value);
    if (Number.isNaN(at)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: ${JSON.stringify(text)} is not a valid time`);
    return new Date(at);
  }
  try {
    return new Date(now - parseDuration(value, what));
  } catch {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} must be a time (2026-12-03T10:00:00Z, Unix seconds) or a duration ago (10m, 1h), not ${JSON.stringify(text)}`);
  }
}

/** 90_061_000 -> "1d1h1m1s"; the inverse of parseDuration for whole seconds. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  let rest = Math.round(ms / 1000);
  let text = '';
  for (const [unit, size] of [['d', 86_400], ['h', 3_600], ['m', 60]] as const) {
    if (rest >= size) {
      text += `${Math.floor(rest / size)}${unit}`;
      rest %= size;
    }
  }
  return rest > 0 || !text ? `${text}${rest}s` : text;
}
