import type { Db } from './database.js';
import type { CacheEntry } from '../domain/action.js';

interface CacheRow {
  key: string;
  snapshot_id: string;
  description: string;
  created_at: string;
  last_used: string;
  hits: number;
}

function fromRow(r: CacheRow): CacheEntry {
  return { key: r.key, snapshotId: r.snapshot_id, description: r.description, createdAt: r.created_at, lastUsed: r.last_used, hits: r.hits };
}

/** Action-cache entries: key -> snapshot. Written once per key; a hit bumps `hits` and `last_used`. */
export class ActionCacheStore {
  constructor(private readonly db: Db) {}

  get(key: string): CacheEntry | undefined {
    const row = this.db.prepare('SELECT * FROM action_cache WHERE key = ?').get(key) as CacheRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** False when the key is taken already (the first writer wins; entries are never overwritten). */
  insert(entry: CacheEntry): boolean {
    const result = this.db
      .prepare(
        `INSERT OR IGNORE INTO action_cache (key, snapshot_id, description, created_at, last_used, hits)
         VALUES (@key, @snapshotId, @description, @createdAt, @lastUsed, @hits)`,
      )
      .run(entry);
    return result.changes === 1;
  }

  /** `insert`, taking the key's place with `replace`; the caller holds a transaction. */
  put(entry: CacheEntry, replace: boolean): void {
    if (replace) this.delete(entry.key);
    this.insert(entry);
  }

  recordHit(key: string, at: string): void {
    this.db.prepare('UPDATE action_cache SET hits = hits + 1, last_used = ? WHERE key = ?').run(at, key);
  }

  /** Least recently used first. */
  list(): CacheEntry[] {
    return (this.db.prepare('SELECT * FROM action_cache ORDER BY last_used, key').all() as CacheRow[]).map(fromRow);
  }

  bySnapshot(snapshotId: string): CacheEntry[] {
    return (this.db.prepare('SELECT * FROM action_cache WHERE snapshot_id = ?').all(snapshotId) as CacheRow[]).map(fromRow);
  }

  delete(key: string): void {
    this.db.prepare('DELETE FROM action_cache WHERE key = ?').run(key);
  }

  deleteForSnapshot(snapshotId: string): void {
    this.db.prepare('DELETE FROM action_cache WHERE snapshot_id = ?').run(snapshotId);
  }
}
