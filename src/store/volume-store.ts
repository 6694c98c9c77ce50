import type { Db } from './database.js';
import type { VolumeRecord } from '../domain/volume.js';

interface VolumeRow {
  id: string;
  name: string;
  size_bytes: number;
  created_at: string;
  labels: string | null;
}

function fromRow(row: VolumeRow): VolumeRecord {
  return {
    id: row.id,
    name: row.name,
    sizeBytes: row.size_bytes,
    createdAt: row.created_at,
    ...(row.labels ? { labels: JSON.parse(row.labels) as Record<string, string> } : {}),
  };
}

/** Named volumes' records; their images are files under volumes/ (engine/volumes.ts keeps both in step). */
export class VolumeStore {
  constructor(private readonly db: Db) {}

  insert(volume: VolumeRecord): void {
    this.db
      .prepare('INSERT INTO volumes (id, name, size_bytes, created_at, labels) VALUES (?, ?, ?, ?, ?)')
      .run(volume.id, volume.name, volume.sizeBytes, volume.createdAt, volume.labels ? JSON.stringify(volume.labels) : null);
  }

  byName(name: string): VolumeRecord | undefined {
    const row = this.db.prepare('SELECT * FROM volumes WHERE name = ?').get(name) as VolumeRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  list(): VolumeRecord[] {
    return (this.db.prepare('SELECT * FROM volumes ORDER BY created_at, name').all() as VolumeRow[]).map(fromRow);
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM volumes WHERE id = ?').run(id);
  }
}
