import { CellError, ErrorCodes } from './errors.js';
import { formatDuration } from './duration.js';

/**
 * A VM's time limits (`--ttl`, `--idle-timeout`), E2B's sandbox timeout and auto-pause:
 * - `ttlMs`: it is stopped (removed with `--rm`) this long after it started, or after the last
 *   `cell update --ttl` if that came later (E2B's setTimeout: the clock starts over);
 * - `idleTimeoutMs`: no exec, file copy or published-port traffic for this long, then
 *   `idleAction` (stop; pause: its vCPUs stop, no CPU used; pause-to-disk: its memory goes to disk
 *   and its QEMU ends, freeing the host's RAM too).
 * Part of the spec, so forks keep them and a celld restart enforces them.
 */
export interface VmTimeouts {
  ttlMs?: number;
  /** When `cell update` last set the TTL (ISO time): the TTL runs from here or the start, the later. */
  ttlSince?: string;
  idleTimeoutMs?: number;
  idleAction?: IdleAction;
}

export type IdleAction = 'stop' | 'pause' | 'pause-to-disk';
export const IDLE_ACTIONS: readonly IdleAction[] = ['stop', 'pause', 'pause-to-disk'];

/** What a user gives: absent leaves a field as it is, 0 or null clears it. */
export interface TimeoutsRequest {
  ttlMs?: number | null;
  idleTimeoutMs?: number | null;
  idleAction?: IdleAction;
}

const MIN_MS = 1000;
const MAX_MS = 365 * 86_400_000;

function checked(value: number, flag: string): number {
  if (!Number.isFinite(value) || value < MIN_MS || value > MAX_MS) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${flag} ${formatDuration(Math.max(0, value))} is out of range: give 1s to 365d (0 turns it off)`);
  }
  return Math.round(value);
}

/**
 * `current` with `req` applied (`now` stamps a new TTL); undefined when nothing is left. An idle
 * action without an idle timeout is refused: it would do nothing.
 */
export function applyTimeouts(current: VmTimeouts | undefined, req: TimeoutsRequest, now?: Date): VmTimeouts | undefined {
  const next: VmTimeouts = { ...current };
  if (req.ttlMs !== undefined) {
    delete next.ttlMs;
    delete next.ttlSince;
    if (req.ttlMs) {
      next.ttlMs = checked(req.ttlMs, '--ttl');
      if (now) next.ttlSince = now.toISOString();
    }
  }
  if (req.idleTimeoutMs !== undefined) {
    delete next.idleTimeoutMs;
    if (req.idleTimeoutMs) next.idleTimeoutMs = checked(req.idleTimeoutMs, '--idle-timeout');
  }
  if (req.idleAction !== undefined) {
    if (!IDLE_ACTIONS.includes(req.idleAction)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--idle-action must be stop, pause or pause-to-disk, not ${JSON.stringify(req.idleAction)}`);
    next.idleAction = req.idleAction;
  }
  if (req.idleAction !== undefined && !next.idleTimeoutMs) throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--idle-action needs --idle-timeout');
  if (!next.idleTimeoutMs) delete next.idleAction;
  return Object.keys(next).length > 0 ? next : undefined;
}

/** When a VM that started at `startedAt` runs out of time (ms since the epoch); undefined: no TTL. */
export function ttlDeadline(timeouts: VmTimeouts | undefined, startedAt: string | null): number | undefined {
  if (!timeouts?.ttlMs || !startedAt) return undefined;
  const since = Math.max(Date.parse(startedAt) || 0, timeouts.ttlSince ? Date.parse(timeouts.ttlSince) || 0 : 0);
  return since + timeouts.ttlMs;
}

export type TimeoutVerdict = { act: 'ttl' } | { act: 'idle'; action: IdleAction } | undefined;

/** What is due for a running VM now, given when it was last active (ms); a TTL wins over idleness. */
export function dueTimeout(timeouts: VmTimeouts | undefined, startedAt: string | null, lastActiveMs: number, nowMs: number): TimeoutVerdict {
  const deadline = ttlDeadline(timeouts, startedAt);
  if (deadline !== undefined && nowMs >= deadline) return { act: 'ttl' };
  if (timeouts?.idleTimeoutMs && nowMs - lastActiveMs >= timeouts.idleTimeoutMs) return { act: 'idle', action: timeouts.idleAction ?? 'stop' };
  return undefined;
}
