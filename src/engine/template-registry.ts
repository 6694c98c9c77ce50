import { CellError, ErrorCodes } from '../domain/errors.js';
import { shortId } from '../domain/ids.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { OCI_MANIFEST } from '../domain/snapshot-artifact.js';
import { OCI_INDEX, parseTemplateIndex, templateIndex, type TemplateDocument } from '../domain/template-artifact.js';
import { formatReference, manifestSelector, parseReference } from '../image/reference.js';
import type { TemplateRecord, TemplateRevision } from '../store/template-store.js';
import { clientFor, type PushResult, type RegistryAccess, type TransferProgress } from './snapshot-registry.js';

/**
 * `cell template push` and `pull` (domain/template-artifact.ts): a variant's current revision as
 * an OCI index over its snapshots. Push sends each snapshot as a snapshot artifact under its digest
 * (the warm snapshot after the built disk it was booted from, so its RAM goes as the chunks that
 * differ), then the index under the tag. Pull reads and checks the index, then pulls each part as
 * `cell snapshot pull` does (refused before its RAM is fetched if this host cannot restore it).
 */

/** What template push and pull need of the snapshot service. */
export interface SnapshotTransfers {
  get(id: string): SnapshotRecord | undefined;
  list(): SnapshotRecord[];
  push(ref: string, reference: string, opts: { insecureRegistries?: string[]; onProgress?: TransferProgress; untagged?: boolean }): Promise<PushResult>;
  pull(reference: string, opts: { insecureRegistries?: string[]; onProgress?: TransferProgress }): Promise<SnapshotRecord>;
}

export interface TemplatePushResult extends PushResult {
  /** The snapshots' manifests, by part. */
  parts: { disk: string; warm: string | null };
}

/** One bar over several transfers: each part's bytes on top of the parts before it. */
function partsProgress(onProgress: TransferProgress): { part: TransferProgress; next(): void } {
  let before = 0;
  let last = 0;
  return {
    part: (done, total) => {
      last = total;
      onProgress(before + done, before + total);
    },
    next: () => {
      before += last;
      last = 0;
    },
  };
}

/** `access` already holds `opts.insecureRegistries`; the snapshot service adds them itself. */
export async function pushTemplate(
  snapshots: SnapshotTransfers,
  access: RegistryAccess,
  view: { template: TemplateRecord; revision: TemplateRevision },
  reference: string,
  opts: { insecureRegistries?: string[]; onProgress?: TransferProgress } = {},
): Promise<TemplatePushResult> {
  const target = parseReference(reference);
  if (target.digest) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `push to a tag, not a digest: ${reference}`);
  const { template, revision } = view;
  const disk = snapshots.get(revision.diskSnapshot);
  if (!disk) throw new CellError(ErrorCodes.NOT_FOUND, `template ${template.name}: its built disk (snapshot ${shortId(revision.diskSnapshot)}) is gone; rebuild it`);
  const warm = revision.warmSnapshot ? snapshots.get(revision.warmSnapshot) : undefined;
  if (revision.warmSnapshot && !warm) throw new CellError(ErrorCodes.NOT_FOUND, `template ${template.name}: its warm snapshot ${shortId(revision.warmSnapshot)} is gone; rebuild it`);

  const repository = formatReference({ registry: target.registry, repository: target.repository });
  const progress = partsProgress(opts.onProgress ?? (() => {}));
  const result: TemplatePushResult = { reference: formatReference(target), digest: '', uploaded: { blobs: 0, bytes: 0 }, existing: { blobs: 0, bytes: 0 }, manifestBytes: 0, parts: { disk: '', warm: null } };
  const pushPart = async (snapshot: SnapshotRecord) => {
    const r = await snapshots.push(snapshot.id, repository, { insecureRegistries: opts.insecureRegistries, onProgress: progress.part, untagged: true });
    progress.next();
    for (const k of ['uploaded', 'existing'] as const) {
      result[k].blobs += r[k].blobs;
      result[k].bytes += r[k].bytes;
    }
    return { mediaType: OCI_MANIFEST, digest: r.digest as `sha256:${string}`, size: r.manifestBytes };
  };
  // The disk first: the warm snapshot was booted from it, so its RAM is sent as what differs.
  const diskPart = await pushPart(disk);
  const warmPart = warm ? await pushPart(warm) : undefined;
  const { pool: _pool, ...variant } = revision.variant;
  const document: TemplateDocument = {
    format: 1,
    name: template.name,
    templateId: template.templateId,
    role: template.role,
    cacheKey: revision.cacheKey,
    inputsHash: revision.inputsHash,
    schemaVersion: revision.schemaVersion,
    variant,
    service: revision.service,
    builtAt: revision.builtAt,
  };
  const index = templateIndex(
    { document, disk: diskPart, ...(warmPart ? { warm: warmPart } : {}) },
    { 'org.opencontainers.image.created': revision.builtAt, 'org.opencontainers.image.title': template.name },
  );
  const client = await clientFor(target.registry, access);
  result.digest = await client.putManifest(target.repository, manifestSelector(target), index, OCI_INDEX);
  result.manifestBytes = index.length;
  result.parts = { disk: diskPart.digest, warm: warmPart?.digest ?? null };
  return result;
}

export interface PulledTemplate {
  document: TemplateDocument;
  disk: SnapshotRecord;
  warm: SnapshotRecord | null;
  reference: string;
}

/**
 * Reads the index, checks it, and pulls its snapshots. A warm snapshot that does not have the
 * variant's resources is refused; the snapshots this pull brought are removed again when it fails.
 */
export async function pullTemplate(
  snapshots: SnapshotTransfers & { remove(id: string, force: boolean): Promise<void> },
  access: RegistryAccess,
  reference: string,
  opts: { insecureRegistries?: string[]; onProgress?: TransferProgress } = {},
): Promise<PulledTemplate> {
  const source = parseReference(reference);
  const what = formatReference(source);
  const client = await clientFor(source.registry, access);
  const fetched = await client.getManifest(source.repository, manifestSelector(source));
  const artifact = parseTemplateIndex(fetched.bytes, what);
  const progress = partsProgress(opts.onProgress ?? (() => {}));
  // Snapshots this host had (built here, or pulled before) are never removed by a failed pull.
  const had = new Set(snapshots.list().map((s) => s.id));
  const brought: string[] = [];
  const pullPart = async (digest: string) => {
    const partRef = formatReference({ registry: source.registry, repository: source.repository, digest: digest as `sha256:${string}` });
    const snapshot = await snapshots.pull(partRef, { insecureRegistries: opts.insecureRegistries, onProgress: progress.part });
    progress.next();
    if (!had.has(snapshot.id) && !brought.includes(snapshot.id)) brought.push(snapshot.id);
    return snapshot;
  };
  try {
    const disk = await pullPart(artifact.disk.digest);
    const warm = artifact.warm ? await pullPart(artifact.warm.digest) : null;
    const { variant } = artifact.document;
    if (warm && (warm.spec.cpus !== variant.vcpus || warm.spec.memoryMib !== variant.memMib || (warm.spec.dataDiskMib ?? 0) !== variant.dataDiskMib)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not a usable cellvm template: its warm snapshot does not have its variant's CPUs, memory and data disk`);
    }
    return { document: artifact.document, disk, warm, reference: what };
  } catch (err) {
    for (const id of brought.reverse()) await snapshots.remove(id, true).catch(() => {});
    throw err;
  }
}
