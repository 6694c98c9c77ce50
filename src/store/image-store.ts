import type { Db } from './database.js';
import type { ImageConfig, ImageRecord } from '../domain/image.js';

interface ImageRow {
  reference: string;
  digest: string;
  disk_path: string;
  size_bytes: number;
  config: string;
  builtin: number;
  created_at: string;
  last_used: string | null;
}

function fromRow(row: ImageRow): ImageRecord {
  return {
    reference: row.reference,
    digest: row.digest,
    diskPath: row.disk_path,
    sizeBytes: row.size_bytes,
    config: JSON.parse(row.config) as ImageConfig,
    builtin: row.builtin === 1,
    createdAt: row.created_at,
    lastUsed: row.last_used,
  };
}

/** Image records: which base disk a reference names. */
export class ImageStore {
  constructor(private readonly db: Db) {}

  upsert(image: ImageRecord): void {
    this.db
      .prepare(
        `INSERT INTO images (reference, digest, disk_path, size_bytes, config, builtin, created_at, last_used)
         VALUES (@reference, @digest, @diskPath, @sizeBytes, @config, @builtin, @createdAt, @lastUsed)
         ON CONFLICT(reference) DO UPDATE SET digest = excluded.digest, disk_path = excluded.disk_path,
           size_bytes = excluded.size_bytes, config = excluded.config, builtin = excluded.builtin`,
      )
      .run({ ...image, config: JSON.stringify(image.config), builtin: image.builtin ? 1 : 0 });
  }

  get(reference: string): ImageRecord | undefined {
    const row = this.db.prepare('SELECT * FROM images WHERE reference = ?').get(reference) as ImageRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  list(): ImageRecord[] {
    return (this.db.prepare('SELECT * FROM images ORDER BY reference').all() as ImageRow[]).map(fromRow);
  }

  touch(reference: string, at: string): void {
    this.db.prepare('UPDATE images SET last_used = ? WHERE reference = ?').run(at, reference);
  }
}
