import { CellError, ErrorCodes } from './errors.js';
import { validateName } from './ids.js';
import { validatePorts } from './network.js';
import { ArtifactTypes, OCI_MANIFEST, type Descriptor } from './snapshot-artifact.js';
import { TEMPLATE_SCHEMA_VERSION, type TemplateService, type TemplateVariant } from './template-file.js';

/**
 * A template variant's revision as an OCI artifact (docs/snapshot-artifacts.md, "Templates"): a
 * standard OCI image index with cellvm's template artifactType whose manifests are the revision's
 * snapshots, each a snapshot artifact of its own (the built disk, and the warm snapshot when there
 * is one), so a registry's garbage collection keeps them while the index is tagged. What the
 * revision is (variant, service, keys) rides in one annotation of the index: small, and an index
 * has no config blob. The snapshots' ids are not in it: they are the parts' own.
 *
 * A pulled index is checked here before any part is fetched: a registry is not trusted.
 */
export const TEMPLATE_ARTIFACT = 'application/vnd.cellvm.template.v1';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
/** The revision, as JSON, on the index. */
export const TEMPLATE_ANNOTATION = 'dev.cellvm.template';
/** On each manifest of the index: which part it is. */
export const PART_ANNOTATION = 'dev.cellvm.template.part';
const MAX_TEMPLATE_JSON = 64 * 1024;
const MAX_PART_MANIFEST_BYTES = 4 * 1024 * 1024;

export type TemplatePart = 'disk' | 'warm';

/** What a pushed revision carries besides its snapshots. */
export interface TemplateDocument {
  format: 1;
  name: string;
  templateId: string;
  role: string;
  cacheKey: string;
  inputsHash: string;
  schemaVersion: number;
  /** Without its pool setting: the pulling host decides its own pools. */
  variant: Omit<TemplateVariant, 'pool'>;
  service: TemplateService | null;
  builtAt: string;
}

export interface TemplateArtifact {
  document: TemplateDocument;
  disk: Descriptor;
  warm?: Descriptor;
}

export function templateIndex(artifact: TemplateArtifact, annotations: Record<string, string>): Buffer {
  const part = (desc: Descriptor, which: TemplatePart) => ({ ...desc, artifactType: ArtifactTypes.SNAPSHOT, annotations: { [PART_ANNOTATION]: which } });
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      artifactType: TEMPLATE_ARTIFACT,
      manifests: [part(artifact.disk, 'disk'), ...(artifact.warm ? [part(artifact.warm, 'warm')] : [])],
      annotations: { ...annotations, [TEMPLATE_ANNOTATION]: JSON.stringify(artifact.document) },
    }),
  );
}

function bad(what: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not a usable cellvm template: ${why}`);
}

const object = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const int = (v: unknown, min: number, max: number): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max;
const HEX64 = /^[0-9a-f]{64}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

function argv(what: string, v: unknown, field: string): string[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > 256 || !v.every((a) => typeof a === 'string' && a.length <= 8192)) {
    throw bad(what, `${field} is not a command (1 to 256 strings)`);
  }
  return v as string[];
}

function named(what: string, v: unknown, field: string): string {
  if (typeof v !== 'string') throw bad(what, `${field} is missing`);
  try {
    return validateName(v);
  } catch (err) {
    throw bad(what, `${field}: ${(err as Error).message}`);
  }
}

function service(what: string, v: unknown): TemplateService | null {
  if (v === null) return null;
  if (!object(v)) throw bad(what, 'its service is not an object');
  const out: TemplateService = { start: argv(what, v.start, 'service.start') };
  if (v.ready !== undefined) {
    if (!object(v.ready)) throw bad(what, 'service.ready is not an object');
    const { timeoutSec, intervalMs } = v.ready;
    if (timeoutSec !== undefined && !int(timeoutSec, 1, 86_400)) throw bad(what, 'service.ready.timeoutSec is not 1 to 86400');
    if (intervalMs !== undefined && !int(intervalMs, 1, 600_000)) throw bad(what, 'service.ready.intervalMs is not 1 to 600000');
    out.ready = { cmd: argv(what, v.ready.cmd, 'service.ready.cmd'), ...(timeoutSec !== undefined ? { timeoutSec } : {}), ...(intervalMs !== undefined ? { intervalMs } : {}) };
  }
  if (v.ports !== undefined) {
    if (!Array.isArray(v.ports) || !v.ports.every((p) => object(p) && int(p.guestPort, 1, 65535))) throw bad(what, 'service.ports are not ports');
    try {
      out.ports = validatePorts(v.ports as { guestPort: number }[]);
    } catch (err) {
      throw bad(what, `service.ports: ${(err as Error).message}`);
    }
  }
  return out;
}

function document(what: string, text: unknown): TemplateDocument {
  if (typeof text !== 'string' || text.length > MAX_TEMPLATE_JSON) throw bad(what, `its ${TEMPLATE_ANNOTATION} annotation is missing or longer than ${MAX_TEMPLATE_JSON} bytes`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw bad(what, `its ${TEMPLATE_ANNOTATION} annotation is not JSON`);
  }
  if (!object(doc) || doc.format !== 1) throw bad(what, 'its template document is not format 1');
  if (doc.schemaVersion !== TEMPLATE_SCHEMA_VERSION) throw bad(what, `it was built with template schema ${String(doc.schemaVersion)}, this cellvm reads ${TEMPLATE_SCHEMA_VERSION}`);
  if (typeof doc.cacheKey !== 'string' || !HEX64.test(doc.cacheKey) || typeof doc.inputsHash !== 'string' || !HEX64.test(doc.inputsHash)) throw bad(what, 'its keys are not sha256 hex');
  if (typeof doc.builtAt !== 'string' || Number.isNaN(Date.parse(doc.builtAt)) || doc.builtAt.length > 64) throw bad(what, 'builtAt is not a time');
  const v = doc.variant;
  if (!object(v)) throw bad(what, 'its variant is not an object');
  if (typeof v.profile !== 'string' || !/^[a-z0-9-]{1,32}$/.test(v.profile)) throw bad(what, 'variant.profile is not a profile name');
  if (!int(v.vcpus, 1, 64) || !int(v.memMib, 16, 1024 * 1024) || !int(v.dataDiskMib, 0, 16 * 1024 * 1024)) throw bad(what, 'its variant has impossible CPUs, memory or data disk');
  const variant = { name: named(what, v.name, 'variant.name'), role: named(what, v.role, 'variant.role'), profile: v.profile, vcpus: v.vcpus, memMib: v.memMib, dataDiskMib: v.dataDiskMib };
  return {
    format: 1,
    name: named(what, doc.name, 'name'),
    templateId: named(what, doc.templateId, 'templateId'),
    role: named(what, doc.role, 'role'),
    cacheKey: doc.cacheKey,
    inputsHash: doc.inputsHash,
    schemaVersion: TEMPLATE_SCHEMA_VERSION,
    variant,
    service: service(what, doc.service ?? null),
    builtAt: doc.builtAt,
  };
}

/** The parts of a pulled index, checked: cellvm's template type, one disk part, at most one warm part, nothing else. */
export function parseTemplateIndex(bytes: Buffer, what: string): TemplateArtifact {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw bad(what, 'its manifest is not JSON');
  }
  if (!object(doc)) throw bad(what, 'its manifest is not a JSON object');
  if (doc.artifactType !== TEMPLATE_ARTIFACT) {
    const hint = doc.artifactType === ArtifactTypes.SNAPSHOT ? ': pull it with cell snapshot pull' : doc.artifactType === undefined ? ': pull an image with cell pull' : '';
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} is not a cellvm template (artifact type ${JSON.stringify(doc.artifactType ?? null).slice(0, 80)})${hint}`);
  }
  if (doc.schemaVersion !== 2 || doc.mediaType !== OCI_INDEX) throw bad(what, 'its manifest is not an OCI image index');
  if (!Array.isArray(doc.manifests) || doc.manifests.length < 1 || doc.manifests.length > 2) throw bad(what, 'it does not list one or two snapshots');
  const parts = new Map<TemplatePart, Descriptor>();
  for (const m of doc.manifests) {
    if (!object(m) || m.mediaType !== OCI_MANIFEST || typeof m.digest !== 'string' || !DIGEST.test(m.digest) || !int(m.size, 1, MAX_PART_MANIFEST_BYTES)) {
      throw bad(what, 'a part is not an OCI manifest descriptor');
    }
    const which = object(m.annotations) ? m.annotations[PART_ANNOTATION] : undefined;
    if ((which !== 'disk' && which !== 'warm') || parts.has(which)) throw bad(what, `a part is ${JSON.stringify(which ?? null)}, not one disk and at most one warm`);
    parts.set(which, { mediaType: OCI_MANIFEST, digest: m.digest as Descriptor['digest'], size: m.size });
  }
  const disk = parts.get('disk');
  if (!disk) throw bad(what, 'it has no disk part');
  const warm = parts.get('warm');
  return { document: document(what, object(doc.annotations) ? doc.annotations[TEMPLATE_ANNOTATION] : undefined), disk, ...(warm ? { warm } : {}) };
}
