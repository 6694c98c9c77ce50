import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { ensurePrivateFile, narrowFileMode } from './private-files.js';

/**
 * Schema migrations, applied in order inside one transaction each; `user_version` records how
 * far a database has come, so an old CELL_HOME upgrades in place.
 */
const MIGRATIONS: string[] = [
  `CREATE TABLE vms (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     state TEXT NOT NULL,
     spec TEXT NOT NULL,
     created_at TEXT NOT NULL,
     started_at TEXT,
     stopped_at TEXT,
     pid INTEGER,
     accelerator TEXT,
     exit TEXT
   );
   CREATE TABLE images (
     reference TEXT PRIMARY KEY,
     digest TEXT NOT NULL,
     disk_path TEXT NOT NULL,
     size_bytes INTEGER NOT NULL,
     config TEXT NOT NULL,
     builtin INTEGER NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL,
     last_used TEXT
   );`,
  // OCI images: what a reference resolved to, which blobs each image digest needs, and pins that
  // keep an image's disk and blobs alive while a VM or snapshot uses them (see image-pins.ts).
  `ALTER TABLE images ADD COLUMN repo_digest TEXT;
   ALTER TABLE images ADD COLUMN config_digest TEXT;
   ALTER TABLE images ADD COLUMN platform TEXT;
   CREATE TABLE image_blobs (
     image_digest TEXT NOT NULL,
     blob_digest TEXT NOT NULL,
     PRIMARY KEY (image_digest, blob_digest)
   );
   CREATE INDEX image_blobs_by_blob ON image_blobs (blob_digest);
   CREATE TABLE pins (
     owner_kind TEXT NOT NULL,
     owner_id TEXT NOT NULL,
     digest TEXT NOT NULL,
     created_at TEXT NOT NULL,
     PRIMARY KEY (owner_kind, owner_id, digest)
   );
   CREATE INDEX pins_by_digest ON pins (digest);`,
  // Snapshots: memory + device state + a frozen disk layer. A VM restored or forked from one
  // runs on an overlay whose backing file is that layer (vms.base_snapshot).
  `CREATE TABLE snapshots (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     parent_vm TEXT,
     parent_vm_name TEXT,
     parent_snapshot TEXT,
     spec TEXT NOT NULL,
     compat TEXT NOT NULL,
     state_bytes INTEGER NOT NULL,
     memory_bytes INTEGER NOT NULL,
     disk_bytes INTEGER NOT NULL,
     created_at TEXT NOT NULL
   );
   ALTER TABLE vms ADD COLUMN base_snapshot TEXT;`,
  // The action cache: a content key (domain/action.ts) and the snapshot an action left. An entry
  // pins its snapshot: snapshot rm and prune leave it alone unless the entry goes too.
  `CREATE TABLE action_cache (
     key TEXT PRIMARY KEY,
     snapshot_id TEXT NOT NULL,
     description TEXT NOT NULL,
     created_at TEXT NOT NULL,
     last_used TEXT NOT NULL,
     hits INTEGER NOT NULL DEFAULT 0
   );
   CREATE INDEX action_cache_by_snapshot ON action_cache (snapshot_id);`,
  // Templates: one row per variant (its name), pointing at its current revision. A revision holds
  // the build's snapshot (the disk cold boots start from) and, when built with --snapshot, a
  // snapshot of a booted, ready VM (warm starts); both are held while the revision exists.
  `CREATE TABLE templates (
     name TEXT PRIMARY KEY,
     template_id TEXT NOT NULL,
     role TEXT NOT NULL,
     current_revision TEXT,
     updated_at TEXT NOT NULL
   );
   CREATE TABLE template_revisions (
     id TEXT PRIMARY KEY,
     template_name TEXT NOT NULL,
     revision_hash TEXT NOT NULL,
     cache_key TEXT NOT NULL,
     inputs_hash TEXT NOT NULL,
     schema_version INTEGER NOT NULL,
     variant TEXT NOT NULL,
     service TEXT,
     disk_snapshot TEXT NOT NULL,
     warm_snapshot TEXT,
     built_at TEXT NOT NULL
   );
   CREATE INDEX template_revisions_by_template ON template_revisions (template_name);
   CREATE INDEX template_revisions_by_disk ON template_revisions (disk_snapshot);
   CREATE INDEX template_revisions_by_warm ON template_revisions (warm_snapshot);`,
  // A removed snapshot that VMs or later snapshots still stand on is retired, not deleted: gone
  // from lists and names, its files kept until its last user is removed.
  `ALTER TABLE snapshots ADD COLUMN retired_at TEXT;`,
  // Named networks (the default one is built in, not a row), and a VM's address on each network
  // it is on, held from its creation (or connect) to its removal (or disconnect), unique per
  // network by the key; `position` orders a VM's networks (the first is its way out).
  `CREATE TABLE networks (
     name TEXT PRIMARY KEY,
     subnet TEXT NOT NULL UNIQUE,
     internal INTEGER NOT NULL DEFAULT 0,
     created_at TEXT NOT NULL
   );
   CREATE TABLE network_leases (
     vm_id TEXT NOT NULL,
     network TEXT NOT NULL,
     address TEXT NOT NULL,
     position INTEGER NOT NULL DEFAULT 0,
     PRIMARY KEY (vm_id, network),
     UNIQUE (network, address)
   );
   CREATE TABLE published_ports (
     vm_id TEXT PRIMARY KEY,
     ports TEXT NOT NULL
   );
   CREATE TABLE egress_denied (
     vm_id TEXT PRIMARY KEY,
     denied INTEGER NOT NULL
   );`,
  // `cell events`: what happened to VMs and snapshots, the last EVENTS_KEPT of it (event-store.ts).
  `CREATE TABLE events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     time TEXT NOT NULL,
     type TEXT NOT NULL,
     action TEXT NOT NULL,
     actor_id TEXT NOT NULL,
     actor_name TEXT NOT NULL,
     labels TEXT,
     attributes TEXT NOT NULL
   );
   CREATE INDEX events_by_time ON events (time);`,
  // A VM's health (domain/health.ts) as JSON: its status, failing streak and last probes.
  `ALTER TABLE vms ADD COLUMN health TEXT;`,
  // Named volumes (domain/volume.ts): who uses one is read from the VMs' specs.
  `CREATE TABLE volumes (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     size_bytes INTEGER NOT NULL,
     created_at TEXT NOT NULL,
     labels TEXT
   );`,
  // Warm pools (engine/spare-pool.ts): how many spares a snapshot keeps ready, and whether warm.
  `CREATE TABLE snapshot_pools (
     snapshot_id TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
     size INTEGER NOT NULL,
     warm INTEGER NOT NULL,
     updated_at TEXT NOT NULL
   );`,
  // Snapshots pulled from a registry, by the reference they were pulled as (a fork of the
  // reference uses the snapshot here instead of pulling again).
  `CREATE TABLE snapshot_sources (
     reference TEXT PRIMARY KEY,
     snapshot_id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE
   );`,
  // Bearer tokens for the TCP listener; the secret only as its SHA-256 (domain/api-token.ts).
  `CREATE TABLE api_tokens (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL UNIQUE,
     scope TEXT NOT NULL,
     secret_hash TEXT NOT NULL,
     created_at TEXT NOT NULL,
     expires_at TEXT,
     last_used_at TEXT
   );`,
  // Template revisions pulled from a registry, by the reference they were pulled as (`run
  // --template REF` uses the revision here instead of pulling again).
  `CREATE TABLE template_sources (
     reference TEXT PRIMARY KEY,
     revision_id TEXT NOT NULL REFERENCES template_revisions (id) ON DELETE CASCADE
   );`,
];

export type Db = Database.Database;

export function openDatabase(path: string): Db {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // It holds VMs' env values: 0600. SQLite makes -wal and -shm with the database file's mode;
  // an older version's files (0644) are narrowed.
  ensurePrivateFile(path);
  narrowFileMode(`${path}-wal`);
  narrowFileMode(`${path}-shm`);
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  // Several processes (celld, tests) may open the same file; wait rather than fail on a lock.
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let version = current; version < MIGRATIONS.length; version++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[version]!);
      db.pragma(`user_version = ${version + 1}`);
    })();
  }
}
