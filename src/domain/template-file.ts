import { createHash } from 'node:crypto';
import type { ReadyCheck } from './action.js';
import { Fields, readBuild, readGuestPorts, type BuildPlan } from './build-file.js';
import { validateName } from './ids.js';
import { checkPoolSetting, type PoolSetting } from './pool.js';
import { TomlSource } from './toml-source.js';
import type { PortSpec } from './network.js';

/**
 * A template (docs/templates.md): a build, an optional service that runs in every VM of the
 * template (started at boot, awaited with its ready check), and variants: the roles the template
 * is run in, each with its own CPUs, memory and data disk. `cell template build` turns each
 * variant into a revision; with `--snapshot` the revision also holds a snapshot of a booted,
 * ready VM, so `cell run --template` starts warm.
 */
export interface TemplateFile {
  templateId: string;
  /** Default profile of variants that name none. */
  profile: string;
  build: BuildPlan;
  service: TemplateService | null;
  variants: TemplateVariant[];
}

export interface TemplateService {
  start: string[];
  ready?: ReadyCheck;
  /** Guest ports every VM of the template publishes, each on a free 127.0.0.1 port of its own. */
  ports?: PortSpec[];
}

export interface TemplateVariant {
  /** `<template_id>-<role>` unless the file names it. */
  name: string;
  role: string;
  profile: string;
  vcpus: number;
  memMib: number;
  /** An empty ext4 disk mounted at /data; 0 = none. */
  dataDiskMib: number;
  /**
   * Spares of the variant's warm snapshot kept ready (docs/pools.md): `pool = 4` (exact spares) or
   * `pool = { size = 4, warm = true }`. Not part of the revision: changing it rebuilds nothing.
   */
  pool?: PoolSetting;
}

export const TEMPLATE_SCHEMA_VERSION = 1;
export const DEFAULT_PROFILE = 'minimal';

const TOP_KEYS = ['template_id', 'profile', 'build', 'service', 'variants'] as const;
const SERVICE_KEYS = ['start', 'ready', 'ready_timeout', 'ports'] as const;
const VARIANT_KEYS = ['name', 'role', 'profile', 'vcpus', 'mem_mib', 'data_disk_mib', 'pool'] as const;

export function parseTemplateFile(fileName: string, text: string, dir: string): TemplateFile {
  const source = new TomlSource(fileName, text);
  const data = source.data;
  const top = new Fields(source, data, '');
  top.onlyKeys(TOP_KEYS, 'a template');
  const templateId = top.string('template_id');
  if (!templateId) throw source.error('template_id', 'a template needs template_id = "NAME"');
  checkName(source, 'template_id', templateId);
  const profile = top.string('profile') ?? DEFAULT_PROFILE;
  if (typeof data.build !== 'object' || data.build === null || Array.isArray(data.build)) {
    throw source.error('build', 'a template needs a [build] table (base and steps, as in a build file)');
  }
  const build = readBuild(source, data.build as Record<string, unknown>, 'build', dir);
  let service: TemplateService | null = null;
  if (data.service !== undefined) {
    if (typeof data.service !== 'object' || data.service === null || Array.isArray(data.service)) throw source.error('service', '[service] must be a table');
    const fields = new Fields(source, data.service as Record<string, unknown>, 'service');
    fields.onlyKeys(SERVICE_KEYS, '[service]');
    const start = fields.command('start');
    if (!start) throw source.error('service', '[service] needs start = "CMD" (the command that runs the service)');
    const ready = fields.command('ready');
    const timeoutSec = fields.integer('ready_timeout', 1);
    const ports = readGuestPorts(source, (data.service as Record<string, unknown>).ports, 'service.ports', "each VM of the template gets free host ports for them");
    service = { start, ready: ready ? { cmd: ready, timeoutSec } : undefined, ...(ports ? { ports } : {}) };
  }
  if (!Array.isArray(data.variants) || data.variants.length === 0) {
    throw source.error('variants', 'a template needs at least one [[variants]] table (role, vcpus, mem_mib)');
  }
  const variants = data.variants.map((raw, i) => {
    const path = `variants[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw source.error(path, 'a variant must be a table');
    const fields = new Fields(source, raw as Record<string, unknown>, path);
    fields.onlyKeys(VARIANT_KEYS, 'a variant');
    const role = fields.string('role');
    if (!role) throw source.error(path, 'a variant needs role = "NAME"');
    checkName(source, `${path}.role`, role);
    const name = fields.string('name') || `${templateId}-${role}`;
    checkName(source, `${path}.name`, name);
    const vcpus = fields.integer('vcpus', 1);
    const memMib = fields.integer('mem_mib', 64);
    if (vcpus === undefined || memMib === undefined) throw source.error(path, 'a variant needs vcpus and mem_mib');
    const pool = readPool(source, (raw as Record<string, unknown>).pool, `${path}.pool`);
    return { name, role, profile: fields.string('profile') ?? profile, vcpus, memMib, dataDiskMib: fields.integer('data_disk_mib', 0) ?? 0, ...(pool ? { pool } : {}) };
  });
  for (const [i, v] of variants.entries()) {
    const clash = variants.findIndex((o) => o.name === v.name || o.role === v.role);
    if (clash !== i) throw source.error(`variants[${i}]`, `two variants share the ${variants[clash]!.name === v.name ? `name "${v.name}"` : `role "${v.role}"`}`);
  }
  return { templateId, profile, build, service, variants };
}

/** `pool = N` or `pool = { size = N, warm = true }`. */
function readPool(source: TomlSource, raw: unknown, path: string): PoolSetting | undefined {
  if (raw === undefined) return undefined;
  const table = typeof raw === 'object' && raw !== null && !Array.isArray(raw) ? (raw as Record<string, unknown>) : { size: raw };
  const fields = new Fields(source, table, path);
  fields.onlyKeys(['size', 'warm'], 'a pool');
  try {
    return checkPoolSetting(fields.integer('size', 0) ?? 0, fields.boolean('warm'));
  } catch (err) {
    throw source.error(path, (err as Error).message);
  }
}

function checkName(source: TomlSource, path: string, value: string): void {
  try {
    validateName(value);
  } catch (err) {
    throw source.error(path, (err as Error).message);
  }
}

/**
 * A variant's revision is identified by what went into it: the build's result key, the service,
 * the variant's resources and the schema version (`inputsHash`); its cache key adds profile and
 * role, as the mvm templates do. Same inputs, same key: no rebuild.
 */
export function revisionKeys(buildKey: string, service: TemplateService | null, variant: TemplateVariant): { inputsHash: string; cacheKey: string } {
  const inputsHash = sha256(
    JSON.stringify([TEMPLATE_SCHEMA_VERSION, buildKey, service, variant.vcpus, variant.memMib, variant.dataDiskMib]),
  );
  return { inputsHash, cacheKey: sha256(`${inputsHash}:${variant.profile}:${variant.role}`) };
}

/** A revision is identified by its inputs and the snapshots it holds: the same on every host that holds them. */
export function revisionHashOf(cacheKey: string, diskSnapshot: string, warmSnapshot: string | null): string {
  return sha256(JSON.stringify([cacheKey, diskSnapshot, warmSnapshot]));
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

