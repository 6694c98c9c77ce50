import type { DiskIo } from '../backend.js';

/**
 * QEMU's `query-blockstats` answer, reduced to what `cell stats` shows: the bytes the guest read
 * and wrote through each of its drives (root and data disk), added up. Only the top-level entry of
 * each drive counts: its `parent` and `backing` entries describe the same I/O again, lower down the
 * qcow2 chain.
 */
export function sumBlockStats(reply: unknown): DiskIo {
  const total: DiskIo = { readBytes: 0, writeBytes: 0 };
  if (!Array.isArray(reply)) return total;
  for (const entry of reply) {
    const stats = (entry as { stats?: { rd_bytes?: unknown; wr_bytes?: unknown } } | null)?.stats;
    total.readBytes += counter(stats?.rd_bytes);
    total.writeBytes += counter(stats?.wr_bytes);
  }
  return total;
}

const counter = (value: unknown): number => (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : 0);
