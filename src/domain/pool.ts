import { CellError, ErrorCodes } from './errors.js';

/**
 * A snapshot's pool (docs/pools.md): `size` spares kept restored and paused for its forks. Exact
 * spares are paused at the snapshot point; warm ones have run their guest's fork paths (an
 * identity refresh, a first command) and are paused again, so a fork from one starts warm.
 */
export interface PoolSetting {
  size: number;
  warm: boolean;
}

/** The most spares one snapshot's pool may keep (its memory cap bounds all pools together). */
export const MAX_POOL_SIZE = 64;

export function checkPoolSetting(size: unknown, warm: unknown): PoolSetting {
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 0 || size > MAX_POOL_SIZE) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `pool size ${String(size)} is out of range: 0 (no pool) to ${MAX_POOL_SIZE}`);
  }
  if (warm !== undefined && typeof warm !== 'boolean') throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'pool warm must be true or false');
  return { size, warm: warm === true };
}

/** What a pool holds now, as `snapshot inspect` and `cell info` show it. */
export interface PoolStatus {
  size: number;
  warm: boolean;
  /** Spares ready to be taken. */
  ready: number;
  /** Spares being made (restoring, or warming up). */
  starting: number;
  /** Their processes' proportional set size, summed: what the pool costs the host now. */
  memoryBytes: number;
  /** Why the pool is below its size, when it is and not only because spares are on their way. */
  held?: string;
}
