import type { Db } from './database.js';
import type { TemplateService, TemplateVariant } from '../domain/template-file.js';

export interface TemplateRecord {
  /** The variant's name: what `cell run --template` takes. */
  name: string;
  templateId: string;
  role: string;
  currentRevision: string | null;
  updatedAt: string;
}

export interface TemplateRevision {
  id: string;
  templateName: string;
  /** Identifies the artifacts: the snapshots the revision holds. */
  revisionHash: string;
  /** Identifies the inputs (with profile and role): equal keys mean nothing to rebuild. */
  cacheKey: string;
  inputsHash: string;
  schemaVersion: number;
  variant: TemplateVariant;
  service: TemplateService | null;
  /** The build's result: cold boots start from its disk. */
  diskSnapshot: string;
  /** A booted, ready VM of this variant (`template build --snapshot`): warm starts fork it. */
  warmSnapshot: string | null;
  builtAt: string;
}

interface TemplateRow {
  name: string;
  template_id: string;
  role: string;
  current_revision: string | null;
  updated_at: string;
}

interface RevisionRow {
  id: string;
  template_name: string;
  revision_hash: string;
  cache_key: string;
  inputs_hash: string;
  schema_version: number;
  variant: string;
  service: string | null;
  disk_snapshot: string;
  warm_snapshot: string | null;
  built_at: string;
}

const template = (r: TemplateRow): TemplateRecord => ({
  name: r.name,
  templateId: r.template_id,
  role: r.role,
  currentRevision: r.current_revision,
  updatedAt: r.updated_at,
});

const revision = (r: RevisionRow): TemplateRevision => ({
  id: r.id,
  templateName: r.template_name,
  revisionHash: r.revision_hash,
  cacheKey: r.cache_key,
  inputsHash: r.inputs_hash,
  schemaVersion: r.schema_version,
  variant: JSON.parse(r.variant) as TemplateVariant,
  service: r.service ? (JSON.parse(r.service) as TemplateService) : null,
  diskSnapshot: r.disk_snapshot,
  warmSnapshot: r.warm_snapshot,
  builtAt: r.built_at,
});

/** Template variants and their revisions. */
export class TemplateStore {
  constructor(private readonly db: Db) {}

  get(name: string): TemplateRecord | undefined {
    const row = this.db.prepare('SELECT * FROM templates WHERE name = ?').get(name) as TemplateRow | undefined;
    return row ? template(row) : undefined;
  }

  list(): TemplateRecord[] {
    return (this.db.prepare('SELECT * FROM templates ORDER BY template_id, role').all() as TemplateRow[]).map(template);
  }

  byTemplateId(templateId: string): TemplateRecord[] {
    return (this.db.prepare('SELECT * FROM templates WHERE template_id = ? ORDER BY role').all(templateId) as TemplateRow[]).map(template);
  }

  /** Creates the variant if new and points it at `revisionId`. */
  setCurrent(t: Omit<TemplateRecord, 'currentRevision' | 'updatedAt'>, revisionId: string, at: string): void {
    this.db
      .prepare(
        `INSERT INTO templates (name, template_id, role, current_revision, updated_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT(name) DO UPDATE SET template_id = excluded.template_id, role = excluded.role,
           updated_at = CASE WHEN templates.current_revision IS excluded.current_revision THEN templates.updated_at ELSE excluded.updated_at END,
           current_revision = excluded.current_revision`,
      )
      .run(t.name, t.templateId, t.role, revisionId, at);
  }

  delete(name: string): void {
    this.db.prepare('DELETE FROM template_revisions WHERE template_name = ?').run(name);
    this.db.prepare('DELETE FROM templates WHERE name = ?').run(name);
  }

  insertRevision(r: TemplateRevision): void {
    this.db
      .prepare(
        `INSERT INTO template_revisions (id, template_name, revision_hash, cache_key, inputs_hash, schema_version, variant, service,
                                         disk_snapshot, warm_snapshot, built_at)
         VALUES (@id, @templateName, @revisionHash, @cacheKey, @inputsHash, @schemaVersion, @variant, @service,
                 @diskSnapshot, @warmSnapshot, @builtAt)`,
      )
      .run({ ...r, variant: JSON.stringify(r.variant), service: r.service ? JSON.stringify(r.service) : null });
  }

  revision(id: string): TemplateRevision | undefined {
    const row = this.db.prepare('SELECT * FROM template_revisions WHERE id = ?').get(id) as RevisionRow | undefined;
    return row ? revision(row) : undefined;
  }

  /** Newest first. */
  revisions(templateName: string): TemplateRevision[] {
    return (
      this.db.prepare('SELECT * FROM template_revisions WHERE template_name = ? ORDER BY built_at DESC, id').all(templateName) as RevisionRow[]
    ).map(revision);
  }

  /** The revision pulled as registry `reference`, while it is here. */
  pulledAs(reference: string): TemplateRevision | undefined {
    const row = this.db
      .prepare('SELECT r.* FROM template_sources s JOIN template_revisions r ON r.id = s.revision_id WHERE s.reference = ?')
      .get(reference) as RevisionRow | undefined;
    return row ? revision(row) : undefined;
  }

  /** Records that `revisionId` was pulled as `reference` (a later pull of the same reference wins). */
  recordSource(reference: string, revisionId: string): void {
    this.db
      .prepare('INSERT INTO template_sources (reference, revision_id) VALUES (?, ?) ON CONFLICT (reference) DO UPDATE SET revision_id = excluded.revision_id')
      .run(reference, revisionId);
  }

  deleteRevision(id: string): void {
    this.db.prepare('DELETE FROM template_revisions WHERE id = ?').run(id);
  }

  /** Revisions holding a snapshot (as their disk or their warm start). */
  holding(snapshotId: string): TemplateRevision[] {
    return (
      this.db.prepare('SELECT * FROM template_revisions WHERE disk_snapshot = ? OR warm_snapshot = ?').all(snapshotId, snapshotId) as RevisionRow[]
    ).map(revision);
  }
}
