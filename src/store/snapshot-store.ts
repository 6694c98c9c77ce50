import type { Db } from './database.js';
import { refCondition } from '../domain/ids.js';
import { EventStore } from './event-store.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { CellError, ErrorCodes } from '../domain/errors.js';

interface SnapshotRow {
  id: string;
  name: string;
  parent_vm: string | null;
  parent_vm_name: string | null;
  parent_snapshot: string | null;
  spec: string;
  compat: string;
  state_bytes: number;
  memory_bytes: number;
  disk_bytes: number;
  created_at: string;
}

function fromRow(r: SnapshotRow): SnapshotRecord {
  return {
    id: r.id,
    name: r.name,
    parentVm: r.parent_vm,
    parentVmName: r.parent_vm_name,
    parentSnapshot: r.parent_snapshot,
    spec: JSON.parse(r.spec) as SnapshotRecord['spec'],
    compat: JSON.parse(r.compat) as SnapshotRecord['compat'],
    stateBytes: r.state_bytes,
    memoryBytes: r.memory_bytes,
    diskBytes: r.disk_bytes,
    createdAt: r.created_at,
  };
}

/** Snapshot records, each added or removed with its event. */
export class SnapshotStore {
  constructor(
    private readonly db: Db,
    private readonly events = new EventStore(db),
  ) {}

  insert(s: SnapshotRecord): void {
    try {
      this.db.transaction(() => {
        this.db
          .prepare(
            `INSERT INTO snapshots (id, name, parent_vm, parent_vm_name, parent_snapshot, spec, compat, state_bytes, memory_bytes, disk_bytes, created_at)
             VALUES (@id, @name, @parentVm, @parentVmName, @parentSnapshot, @spec, @compat, @stateBytes, @memoryBytes, @diskBytes, @createdAt)`,
          )
          .run({ ...s, spec: JSON.stringify(s.spec), compat: JSON.stringify(s.compat) });
        const attributes: Record<string, string> = {};
        if (s.parentVm) attributes.vm = s.parentVm;
        if (s.parentVmName) attributes.vmName = s.parentVmName;
        if (s.parentSnapshot) attributes.parent = s.parentSnapshot;
        this.recordEvent(s, 'create', attributes);
      })();
    } catch (err) {
      if (err instanceof Error && /UNIQUE constraint failed: snapshots.name/.test(err.message)) {
        throw new CellError(ErrorCodes.CONFLICT, `the name "${s.name}" is already in use by another snapshot`);
      }
      throw err;
    }
  }

  /** A snapshot users can see (not retired). */
  get(id: string): SnapshotRecord | undefined {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ? AND retired_at IS NULL').get(id) as SnapshotRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** Any snapshot row, retired or not (lineage walks, id collisions). */
  getAny(id: string): SnapshotRecord | undefined {
    const row = this.db.prepare('SELECT * FROM snapshots WHERE id = ?').get(id) as SnapshotRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** The snapshot pulled as registry `reference`, while it is here. */
  pulledAs(reference: string): SnapshotRecord | undefined {
    const row = this.db
      .prepare('SELECT s.* FROM snapshot_sources r JOIN snapshots s ON s.id = r.snapshot_id WHERE r.reference = ? AND s.retired_at IS NULL')
      .get(reference) as SnapshotRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  /** Records that `snapshotId` was pulled as `reference` (a later pull of the same reference wins). */
  recordSource(reference: string, snapshotId: string): void {
    this.db.prepare('INSERT INTO snapshot_sources (reference, snapshot_id) VALUES (?, ?) ON CONFLICT (reference) DO UPDATE SET snapshot_id = excluded.snapshot_id').run(reference, snapshotId);
  }

  /** The snapshots a reference could mean (an id, a name, an id prefix): engine resolves one of them. */
  matching(ref: string): SnapshotRecord[] {
    const { where, params } = refCondition(ref);
    return (this.db.prepare(`SELECT * FROM snapshots WHERE retired_at IS NULL AND ${where} ORDER BY created_at, id`).all(params) as SnapshotRow[]).map(fromRow);
  }

  /** The snapshots users see: all but retired ones. */
  list(): SnapshotRecord[] {
    return (this.db.prepare('SELECT * FROM snapshots WHERE retired_at IS NULL ORDER BY created_at, id').all() as SnapshotRow[]).map(fromRow);
  }

  /**
   * Takes a snapshot out of lists and frees its name; the row stays while VMs or snapshots stand
   * on its layer (`unusedRetired` says when that is over).
   */
  retire(id: string, at: string): void {
    this.db.transaction(() => {
      const s = this.get(id);
      this.db.prepare("UPDATE snapshots SET retired_at = ?, name = '.retired-' || id WHERE id = ?").run(at, id);
      // Its pool goes with its name: nothing forks a retired snapshot.
      this.db.prepare('DELETE FROM snapshot_pools WHERE snapshot_id = ?').run(id);
      if (s) this.recordEvent(s, 'delete', {});
    })();
  }

  isRetired(id: string): boolean {
    return this.db.prepare('SELECT 1 FROM snapshots WHERE id = ? AND retired_at IS NOT NULL').get(id) !== undefined;
  }

  /** Retired snapshots nothing stands on any more: no VM on their layer, no snapshot on top. */
  unusedRetired(): SnapshotRecord[] {
    return (
      this.db
        .prepare(
          `SELECT * FROM snapshots s WHERE s.retired_at IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM vms v WHERE v.base_snapshot = s.id)
             AND NOT EXISTS (SELECT 1 FROM snapshots c WHERE c.parent_snapshot = s.id)`,
        )
        .all() as SnapshotRow[]
    ).map(fromRow);
  }

  nameExists(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM snapshots WHERE name = ?').get(name) !== undefined;
  }

  rename(id: string, name: string): void {
    this.db.prepare('UPDATE snapshots SET name = ? WHERE id = ?').run(name, id);
  }

  delete(id: string): void {
    this.db.transaction(() => {
      // A retired one had its event when it was retired.
      const s = this.get(id);
      this.db.prepare('DELETE FROM snapshots WHERE id = ?').run(id);
      if (s) this.recordEvent(s, 'delete', {});
    })();
  }

  private recordEvent(s: SnapshotRecord, action: string, attributes: Record<string, string>): void {
    this.events.record({ type: 'snapshot', action, actor: { id: s.id, name: s.name, ...(s.spec.labels ? { labels: s.spec.labels } : {}) }, attributes });
  }

  /** Snapshots whose disk layer sits directly on this one (retired ones too: they chain through it). */
  children(id: string): SnapshotRecord[] {
    return (this.db.prepare('SELECT * FROM snapshots WHERE parent_snapshot = ?').all(id) as SnapshotRow[]).map(fromRow);
  }
}
