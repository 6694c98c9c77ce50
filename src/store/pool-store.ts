import type { Db } from './database.js';
import type { PoolSetting } from '../domain/pool.js';

interface PoolRow {
  snapshot_id: string;
  size: number;
  warm: number;
}

/** Snapshots' pool settings; a row goes with its snapshot (ON DELETE CASCADE). */
export class PoolStore {
  constructor(private readonly db: Db) {}

  /** Size 0 removes the setting. */
  set(snapshotId: string, pool: PoolSetting): void {
    if (pool.size === 0) {
      this.db.prepare('DELETE FROM snapshot_pools WHERE snapshot_id = ?').run(snapshotId);
      return;
    }
    this.db
      .prepare(
        `INSERT INTO snapshot_pools (snapshot_id, size, warm, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (snapshot_id) DO UPDATE SET size = excluded.size, warm = excluded.warm, updated_at = excluded.updated_at`,
      )
      .run(snapshotId, pool.size, pool.warm ? 1 : 0, new Date().toISOString());
  }

  get(snapshotId: string): PoolSetting | undefined {
    const row = this.db.prepare('SELECT * FROM snapshot_pools WHERE snapshot_id = ?').get(snapshotId) as PoolRow | undefined;
    return row ? { size: row.size, warm: row.warm === 1 } : undefined;
  }

  /** Every pool of a snapshot users can see (a retired snapshot forks no more). */
  list(): { snapshotId: string; pool: PoolSetting }[] {
    const rows = this.db
      .prepare('SELECT p.* FROM snapshot_pools p JOIN snapshots s ON s.id = p.snapshot_id WHERE s.retired_at IS NULL ORDER BY p.updated_at')
      .all() as PoolRow[];
    return rows.map((r) => ({ snapshotId: r.snapshot_id, pool: { size: r.size, warm: r.warm === 1 } }));
  }
}
