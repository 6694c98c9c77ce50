import type { Db } from './database.js';
import type { ImageConfig } from '../domain/image.js';

/**
 * Which blobs and base disks must survive garbage collection. An image digest keeps its blobs
 * (`image_blobs`) while some reference (a row in `images`) or some owner (a row in `pins`: a VM or
 * snapshot using that image) names it; a pin may also name a blob digest directly.
 */
/** `pull`: held for a moment after a pull, so the cache cap never evicts the image just fetched. */
export type PinOwnerKind = 'vm' | 'snapshot' | 'template' | 'build' | 'pull';

export interface ImageRegistration {
  /** Canonical reference, the images table's key. */
  reference: string;
  /** The platform manifest's digest: the identity of the unpacked content. */
  digest: string;
  /** What the reference resolved to in the registry (an index or the manifest itself). */
  repoDigest: string | null;
  configDigest: string;
  platform: string | null;
  diskPath: string;
  sizeBytes: number;
  config: ImageConfig;
  /** Every blob the image needs: manifest(s), config, layers. */
  blobs: readonly string[];
  at: string;
}

export interface ImageUsage {
  reference: string;
  digest: string;
  diskPath: string;
  sizeBytes: number;
  builtin: boolean;
  lastUsed: string;
}

export interface ImageOciFacts {
  repoDigest: string | null;
  configDigest: string | null;
  platform: string | null;
}

export class ImagePins {
  constructor(private readonly db: Db) {}

  /** Records an image and the blobs it pins in one transaction: all of it or none. */
  register(r: ImageRegistration): void {
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO images (reference, digest, disk_path, size_bytes, config, builtin, created_at, last_used,
                               repo_digest, config_digest, platform)
           VALUES (@reference, @digest, @diskPath, @sizeBytes, @config, 0, @at, @at, @repoDigest, @configDigest, @platform)
           ON CONFLICT(reference) DO UPDATE SET
             created_at = CASE WHEN images.digest = excluded.digest THEN images.created_at ELSE excluded.created_at END,
             digest = excluded.digest, disk_path = excluded.disk_path, size_bytes = excluded.size_bytes,
             config = excluded.config, builtin = 0, last_used = excluded.last_used,
             repo_digest = excluded.repo_digest, config_digest = excluded.config_digest, platform = excluded.platform`,
        )
        .run({
          reference: r.reference,
          digest: r.digest,
          diskPath: r.diskPath,
          sizeBytes: r.sizeBytes,
          config: JSON.stringify(r.config),
          at: r.at,
          repoDigest: r.repoDigest,
          configDigest: r.configDigest,
          platform: r.platform,
        });
      const link = this.db.prepare('INSERT OR IGNORE INTO image_blobs (image_digest, blob_digest) VALUES (?, ?)');
      for (const blob of new Set(r.blobs)) link.run(r.digest, blob);
    })();
  }

  ociFacts(reference: string): ImageOciFacts | undefined {
    const row = this.db
      .prepare('SELECT repo_digest, config_digest, platform FROM images WHERE reference = ?')
      .get(reference) as { repo_digest: string | null; config_digest: string | null; platform: string | null } | undefined;
    return row && { repoDigest: row.repo_digest, configDigest: row.config_digest, platform: row.platform };
  }

  blobsOf(imageDigest: string): string[] {
    return (this.db.prepare('SELECT blob_digest FROM image_blobs WHERE image_digest = ?').all(imageDigest) as { blob_digest: string }[]).map(
      (r) => r.blob_digest,
    );
  }

  /** Removes one reference; the digest's disk and blobs stay until `collectGarbage` finds them unused. */
  removeReference(reference: string): boolean {
    return this.db.prepare('DELETE FROM images WHERE reference = ? AND builtin = 0').run(reference).changes > 0;
  }

  pin(ownerKind: PinOwnerKind, ownerId: string, digests: readonly string[], at: string = new Date().toISOString()): void {
    const stmt = this.db.prepare('INSERT OR IGNORE INTO pins (owner_kind, owner_id, digest, created_at) VALUES (?, ?, ?, ?)');
    this.db.transaction(() => {
      for (const d of digests) stmt.run(ownerKind, ownerId, d, at);
    })();
  }

  /** Drops every pin of a kind: `pull` pins a dead celld held live only while it ran. */
  unpinKind(ownerKind: PinOwnerKind): number {
    return this.db.prepare('DELETE FROM pins WHERE owner_kind = ?').run(ownerKind).changes;
  }

  /** Drops every pin an owner holds (the VM or snapshot is gone). */
  unpin(ownerKind: PinOwnerKind, ownerId: string): number {
    return this.db.prepare('DELETE FROM pins WHERE owner_kind = ? AND owner_id = ?').run(ownerKind, ownerId).changes;
  }

  pinnedDigests(): Set<string> {
    return new Set((this.db.prepare('SELECT DISTINCT digest FROM pins').all() as { digest: string }[]).map((r) => r.digest));
  }

  /** Image digests something still needs: named by a reference or pinned. */
  liveImageDigests(): Set<string> {
    const rows = this.db
      .prepare('SELECT digest FROM images UNION SELECT digest FROM pins')
      .all() as { digest: string }[];
    return new Set(rows.map((r) => r.digest));
  }

  /** Blob digests something still needs: those of live images, and blobs pinned directly. */
  liveBlobDigests(): Set<string> {
    const rows = this.db
      .prepare(
        `SELECT blob_digest AS digest FROM image_blobs
           WHERE image_digest IN (SELECT digest FROM images UNION SELECT digest FROM pins)
         UNION SELECT digest FROM pins`,
      )
      .all() as { digest: string }[];
    return new Set(rows.map((r) => r.digest));
  }

  /** Forgets which blobs an image digest had, once nothing names that digest any more. */
  dropUnusedImageBlobLinks(): number {
    return this.db
      .prepare('DELETE FROM image_blobs WHERE image_digest NOT IN (SELECT digest FROM images UNION SELECT digest FROM pins)')
      .run().changes;
  }

  /** Every image, least recently used first (never used counts as used when created). */
  byLeastRecentUse(): ImageUsage[] {
    const rows = this.db
      .prepare(
        `SELECT reference, digest, disk_path, size_bytes, builtin, COALESCE(last_used, created_at) AS used
           FROM images ORDER BY used ASC, reference ASC`,
      )
      .all() as { reference: string; digest: string; disk_path: string; size_bytes: number; builtin: number; used: string }[];
    return rows.map((r) => ({
      reference: r.reference,
      digest: r.digest,
      diskPath: r.disk_path,
      sizeBytes: r.size_bytes,
      builtin: r.builtin === 1,
      lastUsed: r.used,
    }));
  }
}
