import { CellError, ErrorCodes } from './errors.js';
import { ID_PATTERN, validateName } from './ids.js';
import type { CompatKey, SnapshotRecord } from './snapshot.js';
import { validateIoLimits, type IoLimits, type VmSpec } from './vm.js';
import { validateNetworkName, validatePorts, type PortRequest, type PortSpec } from './network.js';
import { validateEgress, type EgressPolicy } from './egress.js';

/**
 * The metadata of a snapshot archive (`snapshot.json`), checked field by field: an archive comes
 * from another host or another person and nothing in it is trusted. What is not checked here (the
 * files' kinds and sizes, the disks' backing files) the importer checks on the files themselves.
 */
export const SNAPSHOT_ARCHIVE_FORMAT = 'cellvm-snapshot/1';
/** snapshot.json is a few KiB; anything much larger is not ours. */
export const MAX_ARCHIVE_META_BYTES = 1024 * 1024;
const MAX_GUEST_MEMORY_MIB = 1024 * 1024;
const MAX_STRINGS = 4096;
const MAX_STRING = 64 * 1024;

type Json = Record<string, unknown>;

function bad(file: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `${file} is not a usable cellvm snapshot archive: ${why}`);
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(file: string, o: Json, key: string, opts: { max?: number; pattern?: RegExp } = {}): string {
  const v = o[key];
  if (typeof v !== 'string' || v.length > (opts.max ?? 1024) || /\0/.test(v) || (opts.pattern && !opts.pattern.test(v))) {
    throw bad(file, `${key} must be ${opts.pattern ? `a string matching ${opts.pattern}` : 'a string'}`);
  }
  return v;
}

function int(file: string, o: Json, key: string, min: number, max: number): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(file, `${key} must be a whole number from ${min} to ${max}`);
  return v;
}

function strings(file: string, o: Json, key: string): string[] {
  const v = o[key];
  if (!Array.isArray(v) || v.length > MAX_STRINGS || !v.every((s) => typeof s === 'string' && s.length <= MAX_STRING && !s.includes('\0'))) {
    throw bad(file, `${key} must be a list of strings`);
  }
  return v as string[];
}

function spec(file: string, raw: unknown): VmSpec {
  if (!isObject(raw)) throw bad(file, 'spec is missing');
  const timeoutSec = raw.timeoutSec;
  if (typeof timeoutSec !== 'number' || !Number.isFinite(timeoutSec) || timeoutSec < 0) throw bad(file, 'timeoutSec must be a number of seconds >= 0');
  if (typeof raw.autoRemove !== 'boolean') throw bad(file, 'autoRemove must be true or false');
  const workingDir = str(file, raw, 'workingDir', { max: 4096 });
  if (!workingDir.startsWith('/')) throw bad(file, 'workingDir must be an absolute path');
  const dataDiskMib = raw.dataDiskMib === undefined ? undefined : int(file, raw, 'dataDiskMib', 0, 16 * 1024 * 1024);
  const limits = ioLimits(file, raw.limits);
  const networks = raw.networks === undefined ? undefined : strings(file, raw, 'networks');
  const ports = raw.ports === undefined ? undefined : portList(file, raw.ports);
  let egress: EgressPolicy | undefined;
  try {
    egress = raw.egress === undefined ? undefined : validateEgress(raw.egress as EgressPolicy);
  } catch (err) {
    throw bad(file, (err as Error).message);
  }
  try {
    networks?.forEach(validateNetworkName);
  } catch (err) {
    throw bad(file, (err as Error).message);
  }
  return {
    image: str(file, raw, 'image', { max: 512 }),
    imageDigest: str(file, raw, 'imageDigest', { pattern: /^sha256:[0-9a-f]{64}$/ }),
    cpus: int(file, raw, 'cpus', 1, 1024),
    memoryMib: int(file, raw, 'memoryMib', 1, MAX_GUEST_MEMORY_MIB),
    cmd: strings(file, raw, 'cmd'),
    env: strings(file, raw, 'env'),
    workingDir,
    user: str(file, raw, 'user', { max: 256, pattern: /^\d+(:\d+)?$/ }),
    timeoutSec,
    // A template start says which template of *that* host: meaningless here, so not kept.
    autoRemove: raw.autoRemove,
    ...(dataDiskMib ? { dataDiskMib } : {}),
    ...(limits ? { limits } : {}),
    ...(networks ? { networks } : {}),
    ...(ports ? { ports } : {}),
    ...(egress ? { egress } : {}),
  };
}

function portList(file: string, raw: unknown): PortSpec[] {
  if (!Array.isArray(raw)) throw bad(file, 'ports must be a list');
  try {
    return validatePorts(raw as PortRequest[]);
  } catch (err) {
    throw bad(file, (err as Error).message);
  }
}

function ioLimits(file: string, raw: unknown): IoLimits | undefined {
  if (raw === undefined) return undefined;
  if (!isObject(raw)) throw bad(file, 'limits must be an object');
  try {
    return validateIoLimits(raw as IoLimits);
  } catch (err) {
    throw bad(file, (err as Error).message);
  }
}

function compat(file: string, raw: unknown): CompatKey {
  if (!isObject(raw)) throw bad(file, 'compat is missing');
  return {
    qemuVersion: str(file, raw, 'qemuVersion', { max: 256 }),
    machine: str(file, raw, 'machine', { max: 256 }),
    cpuModel: str(file, raw, 'cpuModel', { max: 256 }),
    accelerator: str(file, raw, 'accelerator', { max: 64 }),
    kernelDigest: str(file, raw, 'kernelDigest', { max: 256 }),
    initramfsDigest: str(file, raw, 'initramfsDigest', { max: 256 }),
  };
}

/**
 * The snapshot the archive's snapshot was taken on top of where it was made (its `parentSnapshot`
 * there), or null. Not its parent here (no disk of it is an overlay on that one): the snapshot
 * this host may store its RAM against, if the host has it (pulled or imported before).
 */
export function archivedParent(text: string): string | null {
  try {
    const parent = (JSON.parse(text) as { snapshot?: { parentSnapshot?: unknown } }).snapshot?.parentSnapshot;
    return typeof parent === 'string' && ID_PATTERN.test(parent) ? parent : null;
  } catch {
    return null;
  }
}

/**
 * A snapshot record from an archive's metadata, as it will be recorded here: its id, name (or
 * `name`), spec and compatibility key checked, sizes filled in by the importer, and no parent on
 * this host. Throws `invalid_argument` naming the first field that is wrong.
 */
export function parseArchiveMeta(file: string, text: string, name?: string): Omit<SnapshotRecord, 'stateBytes' | 'memoryBytes' | 'diskBytes'> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw bad(file, 'snapshot.json is not JSON');
  }
  if (!isObject(raw) || raw.format !== SNAPSHOT_ARCHIVE_FORMAT) throw bad(file, `format is not ${SNAPSHOT_ARCHIVE_FORMAT}`);
  const s = raw.snapshot;
  if (!isObject(s)) throw bad(file, 'snapshot is missing');
  const createdAt = str(file, s, 'createdAt', { max: 64 });
  if (Number.isNaN(Date.parse(createdAt))) throw bad(file, 'createdAt is not a date');
  const finalName = name ?? str(file, s, 'name', { max: 63 });
  try {
    validateName(finalName);
  } catch (err) {
    throw name === undefined ? bad(file, `its name: ${(err as Error).message}`) : err;
  }
  return {
    id: str(file, s, 'id', { pattern: ID_PATTERN }),
    name: finalName,
    // It came from another host: no VM or snapshot here is its parent.
    parentVm: null,
    parentVmName: s.parentVmName === null || s.parentVmName === undefined ? null : str(file, s, 'parentVmName', { max: 63 }),
    parentSnapshot: null,
    spec: spec(file, s.spec),
    compat: compat(file, s.compat),
    createdAt,
  };
}
