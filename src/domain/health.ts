import { CellError, ErrorCodes } from './errors.js';
import { formatDuration } from './duration.js';

/**
 * Health checks as Docker has them (`--health-cmd` and friends): a command run in the guest every
 * `intervalMs`; `retries` failures in a row make the VM `unhealthy`, one success `healthy`.
 * Failures within `startPeriodMs` of its start do not count (a slow server is `starting`, not sick).
 */
export interface HealthCheck {
  /** The argv; `--health-cmd 'curl -f ...'` runs under /bin/sh -c, as Docker's CMD-SHELL. */
  cmd: string[];
  intervalMs: number;
  /** A probe that runs longer is killed and counts as a failure. */
  timeoutMs: number;
  retries: number;
  startPeriodMs: number;
}

export type HealthStatus = 'starting' | 'healthy' | 'unhealthy';

/** One probe's result, as `docker inspect` shows them under State.Health.Log. */
export interface HealthProbe {
  start: string;
  end: string;
  exitCode: number;
  /** Its stdout and stderr together, at most HEALTH_OUTPUT_MAX bytes (the guest chose them). */
  output: string;
}

/** Where a VM with a health check stands; reset to `starting` each time it boots. */
export interface HealthState {
  status: HealthStatus;
  failingStreak: number;
  /** The last HEALTH_LOG_KEPT probes, oldest first. */
  log: HealthProbe[];
}

export const HEALTH_DEFAULTS = { intervalMs: 30_000, timeoutMs: 30_000, retries: 3, startPeriodMs: 0 } as const;
export const HEALTH_LOG_KEPT = 5;
export const HEALTH_OUTPUT_MAX = 4096;

/** What a user gives (`run --health-*`, the SDK, a build file): a shell string or an argv, durations in ms. */
export interface HealthCheckRequest {
  cmd: string | string[];
  intervalMs?: number;
  timeoutMs?: number;
  retries?: number;
  startPeriodMs?: number;
}

const DAY_MS = 24 * 3600_000;
/** Bounds: probes at most ten a second (each is an exec in the guest), for at most a day. */
const BOUNDS = {
  intervalMs: { min: 100, max: DAY_MS, flag: '--health-interval' },
  timeoutMs: { min: 100, max: DAY_MS, flag: '--health-timeout' },
  startPeriodMs: { min: 0, max: DAY_MS, flag: '--health-start-period' },
} as const;

export function validateHealthCheck(req: HealthCheckRequest): HealthCheck {
  const cmd = typeof req.cmd === 'string' ? (req.cmd.trim() === '' ? [] : ['/bin/sh', '-c', req.cmd]) : [...req.cmd];
  if (cmd.length === 0 || cmd[0] === '' || cmd.some((arg) => arg.includes('\0'))) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--health-cmd needs a command, such as "wget -q -O /dev/null http://127.0.0.1/"');
  }
  const check: HealthCheck = { cmd, ...HEALTH_DEFAULTS };
  for (const key of Object.keys(BOUNDS) as (keyof typeof BOUNDS)[]) {
    const value = req[key];
    if (value === undefined) continue;
    const { min, max, flag } = BOUNDS[key];
    if (!Number.isFinite(value) || value < min || value > max) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${flag} ${formatDuration(value)} is out of range: give ${min === 0 ? '0s' : formatDuration(min)} to 24h`);
    }
    check[key] = Math.round(value);
  }
  if (req.retries !== undefined) {
    if (!Number.isInteger(req.retries) || req.retries < 1 || req.retries > 100) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--health-retries ${req.retries} is out of range: give a whole number from 1 to 100`);
    }
    check.retries = req.retries;
  }
  return check;
}

export function initialHealth(): HealthState {
  return { status: 'starting', failingStreak: 0, log: [] };
}

/**
 * The state after one probe. A success is healthy at once; a failure counts only after the start
 * period, and `retries` counted failures in a row make it unhealthy (Docker's rules).
 */
export function nextHealth(state: HealthState, probe: HealthProbe, check: Pick<HealthCheck, 'retries'>, inStartPeriod: boolean): HealthState {
  const log = [...state.log, probe].slice(-HEALTH_LOG_KEPT);
  if (probe.exitCode === 0) return { status: 'healthy', failingStreak: 0, log };
  if (inStartPeriod && state.status === 'starting') return { ...state, log };
  const failingStreak = state.failingStreak + 1;
  return { status: failingStreak >= check.retries ? 'unhealthy' : state.status, failingStreak, log };
}
