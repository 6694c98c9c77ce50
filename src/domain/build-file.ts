import { posix } from 'node:path';
import { validateHealthCheck, type HealthCheck } from './health.js';
import { parseMounts } from './volume.js';
import { parseDuration } from './duration.js';
import type { ActionSource, ReadyCheck } from './action.js';
import { CellError, ErrorCodes } from './errors.js';
import { validateName } from './ids.js';
import { parsePortSpec, validatePorts, type PortSpec } from './network.js';
import { TomlSource } from './toml-source.js';

/**
 * A build file (TOML, docs/build-files.md): a base image or snapshot and steps. Each step forks
 * from its parent's snapshot (the previous step, or the one `from` names) and is cached by key,
 * so a change in step k re-runs k and what grows from it, nothing before.
 */
export type BuildStep = RunStep | CopyStep | EnvStep | WorkdirStep;

interface StepBase {
  /** Position in the file, 0-based. */
  index: number;
  name?: string;
  /** The step this one grows from: an index, or -1 for the base. */
  parent: number;
  line: number | undefined;
}

export interface RunStep extends StepBase {
  kind: 'run';
  cmd: string[];
  timeoutSec?: number;
  detach: boolean;
  ready?: ReadyCheck;
  user?: string;
}

export interface CopyStep extends StepBase {
  kind: 'copy';
  /** Absolute host path (relative ones are resolved against the build file's directory). */
  hostPath: string;
  /** Guest path; default: the working directory. */
  to?: string;
}

export interface EnvStep extends StepBase {
  kind: 'env';
  env: string[];
}

export interface WorkdirStep extends StepBase {
  kind: 'workdir';
  dir: string;
}

export interface BuildPlan {
  base: ActionSource;
  cpus?: number;
  memoryMib?: number;
  steps: BuildStep[];
  /** Indexes from the first step after the base to the target, in build order. */
  chain: number[];
  /** The build file's folder: `copy` paths resolve against it and must stay inside it. */
  contextDir: string;
  /** Guest ports the result's forks publish, each on a free host port (Dockerfile's EXPOSE, but published). */
  ports?: PortSpec[];
  /** The health check of the VMs forked from the result (Dockerfile's HEALTHCHECK). */
  health?: HealthCheck;
  /** `volumes = ["cache:/root/.cache"]`: named volumes every step's VM mounts (a base image only). */
  volumes?: string[];
}

const STEP_KINDS = ['run', 'copy', 'env', 'workdir'] as const;
const STEP_KEYS: Record<(typeof STEP_KINDS)[number], readonly string[]> = {
  run: ['run', 'name', 'from', 'timeout', 'detach', 'ready', 'ready_timeout', 'user'],
  copy: ['copy', 'to', 'name', 'from'],
  env: ['env', 'name', 'from'],
  workdir: ['workdir', 'name', 'from'],
};
export const BUILD_KEYS = ['base', 'from', 'cpus', 'memory_mib', 'target', 'ports', 'healthcheck', 'volumes', 'step'] as const;

/** Parses and checks a build file's text; `dir` is where relative copy paths start. */
export function parseBuildFile(fileName: string, text: string, dir: string, opts: { target?: string } = {}): BuildPlan {
  const source = new TomlSource(fileName, text);
  return readBuild(source, source.data, '', dir, opts.target);
}

/** Reads a build table (the whole file, or a template's `[build]`) at `prefix`. */
export function readBuild(source: TomlSource, table: Record<string, unknown>, prefix: string, dir: string, target?: string): BuildPlan {
  const at = (key: string) => (prefix ? `${prefix}.${key}` : key);
  const fields = new Fields(source, table, prefix);
  fields.onlyKeys(BUILD_KEYS, 'a build');
  const baseImage = fields.string('base');
  const baseSnapshot = fields.string('from');
  if ((baseImage === undefined) === (baseSnapshot === undefined)) {
    throw source.error(prefix, `${prefix ? `[${prefix}] needs` : 'a build needs'} exactly one of base = "IMAGE" or from = "SNAPSHOT"`);
  }
  const base: ActionSource = baseImage !== undefined ? { image: baseImage } : { snapshot: baseSnapshot! };
  const cpus = fields.integer('cpus', 1);
  const memoryMib = fields.integer('memory_mib', 64);
  if ('snapshot' in base && (cpus !== undefined || memoryMib !== undefined)) {
    throw source.error(at('cpus'), 'cpus and memory_mib apply to a base image only: a snapshot keeps its own');
  }
  const rawSteps = table.step;
  if (rawSteps === undefined) throw source.error(prefix, 'a build needs at least one [[step]]');
  if (!Array.isArray(rawSteps)) throw source.error(at('step'), 'step must be an array of tables: write [[step]]');
  const steps = rawSteps.map((raw, index) => readStep(source, raw, `${at('step')}[${index}]`, index, dir));
  linkParents(source, steps, at('step'));
  const targetName = target ?? fields.string('target');
  let targetIndex = steps.length - 1;
  if (targetName !== undefined) {
    const found = steps.find((s) => s.name === targetName);
    if (!found) throw source.error(at('target'), `no step is named "${targetName}" (names: ${names(steps)})`);
    targetIndex = found.index;
  }
  const chain: number[] = [];
  for (let i = targetIndex; i >= 0; i = steps[i]!.parent) chain.unshift(i);
  const ports = readGuestPorts(source, table.ports, at('ports'), "the result's forks publish them on free host ports");
  const health = readHealthCheck(source, table.healthcheck, at('healthcheck'));
  const volumes = readVolumes(source, table.volumes, at('volumes'));
  if (volumes && 'snapshot' in base) throw source.error(at('volumes'), "volumes apply to a base image only: a snapshot's VMs mount the snapshot's volumes");
  return { base, cpus, memoryMib, steps, chain, contextDir: dir, ...(ports ? { ports } : {}), ...(health ? { health } : {}), ...(volumes ? { volumes } : {}) };
}

const HEALTH_KEYS = ['cmd', 'interval', 'timeout', 'retries', 'start_period'] as const;

/**
 * `[healthcheck]`: `cmd` (a string for /bin/sh -c, or an argv), `interval`, `timeout`,
 * `start_period` (durations: "5s", or a number of seconds) and `retries`, with Docker's defaults.
 */
function readHealthCheck(source: TomlSource, raw: unknown, path: string): HealthCheck | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw source.error(path, 'healthcheck must be a table: [healthcheck] with cmd = "..."');
  const table = raw as Record<string, unknown>;
  const fields = new Fields(source, table, path);
  fields.onlyKeys(HEALTH_KEYS, 'healthcheck');
  const cmd = fields.command('cmd');
  if (!cmd) throw source.error(path, 'healthcheck needs cmd = "..." (exit 0: healthy)');
  const duration = (key: string): number | undefined => {
    const v = table[key];
    if (v === undefined) return undefined;
    if (typeof v === 'number' && Number.isFinite(v)) return Math.round(v * 1000);
    if (typeof v === 'string') {
      try {
        return parseDuration(v, key);
      } catch (err) {
        throw source.error(`${path}.${key}`, (err as Error).message);
      }
    }
    throw source.error(`${path}.${key}`, `${key} must be a duration such as "5s" or a number of seconds`);
  };
  const req = {
    cmd,
    intervalMs: duration('interval'),
    timeoutMs: duration('timeout'),
    startPeriodMs: duration('start_period'),
    retries: fields.integer('retries', 1),
  };
  try {
    return validateHealthCheck(Object.fromEntries(Object.entries(req).filter(([, v]) => v !== undefined)) as typeof req);
  } catch (err) {
    throw source.error(path, (err as Error).message.replace(/--health-(\w+)/g, (_, k: string) => k.replace('-', '_')));
  }
}

/** `ports = [8080, "53/udp"]`: guest ports, published on free host ports (the VMs they are for are many). */
export function readGuestPorts(source: TomlSource, raw: unknown, path: string, meaning: string): PortSpec[] | undefined {
  if (raw === undefined) return undefined;
  const bad = () => source.error(path, `ports = [8080, "53/udp"]: guest ports (${meaning})`);
  if (!Array.isArray(raw) || raw.length > 64) throw bad();
  try {
    return validatePorts(
      raw.map((p) => {
        if (typeof p === 'number' || (typeof p === 'string' && /^\d+(\/(tcp|udp))?$/.test(p))) return parsePortSpec(String(p));
        throw bad();
      }),
    );
  } catch (err) {
    if (err instanceof CellError && err.code === ErrorCodes.BAD_BUILD_FILE) throw err;
    throw bad();
  }
}

/** Whether `path` is `dir` or below it (both absolute, normalised). */
export function isWithin(dir: string, path: string): boolean {
  const rel = posix.relative(dir, path);
  return rel === '' || (rel !== '..' && !rel.startsWith('../') && !posix.isAbsolute(rel));
}

function readStep(source: TomlSource, raw: unknown, path: string, index: number, dir: string): BuildStep {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw source.error(path, 'a step must be a table');
  const table = raw as Record<string, unknown>;
  const kinds = STEP_KINDS.filter((k) => k in table);
  if (kinds.length !== 1) {
    throw source.error(path, `step ${index + 1} needs exactly one of ${STEP_KINDS.join(', ')}${kinds.length ? ` (it has ${kinds.join(' and ')})` : ''}`);
  }
  const kind = kinds[0]!;
  const fields = new Fields(source, table, path);
  fields.onlyKeys(STEP_KEYS[kind], `a ${kind} step`);
  const name = fields.string('name');
  if (name !== undefined) {
    try {
      validateName(name);
    } catch (err) {
      throw source.error(`${path}.name`, (err as Error).message);
    }
  }
  const base = { index, name, parent: index - 1, line: source.lineOf(path), from: fields.string('from') } as StepBase & { from?: string };
  switch (kind) {
    case 'run': {
      const cmd = fields.command('run')!;
      const readyCmd = fields.command('ready');
      const readyTimeout = fields.integer('ready_timeout', 1);
      const detach = fields.boolean('detach') ?? false;
      if (detach && !readyCmd) throw source.error(`${path}.detach`, 'detach = true needs a ready check: ready = "CMD"');
      if (readyTimeout !== undefined && !readyCmd) throw source.error(`${path}.ready_timeout`, 'ready_timeout without ready');
      return {
        ...base,
        kind,
        cmd,
        timeoutSec: fields.integer('timeout', 0),
        detach,
        ready: readyCmd ? { cmd: readyCmd, timeoutSec: readyTimeout } : undefined,
        user: fields.string('user'),
      };
    }
    case 'copy': {
      const from = fields.string('copy')!;
      const to = fields.string('to');
      const hostPath = posix.resolve(dir, from);
      // A build file may come with code nobody reviewed: it copies what sits beside it, never
      // the host's other files (../../etc/shadow, /root/.ssh).
      if (!isWithin(dir, hostPath)) throw source.error(`${path}.copy`, `copy "${from}" is outside the build file's folder ${dir}: a build copies only files in that folder`);
      return { ...base, kind, hostPath, to };
    }
    case 'env':
      return { ...base, kind, env: fields.stringTable('env')! };
    case 'workdir': {
      const dirValue = fields.string('workdir')!;
      if (!dirValue) throw source.error(`${path}.workdir`, 'workdir must not be empty');
      return { ...base, kind, dir: dirValue };
    }
  }
}

/** Resolves `from` names to parents and refuses unknown names, duplicates and cycles. */
function linkParents(source: TomlSource, steps: (BuildStep & { from?: string })[], path: string): void {
  const byName = new Map<string, BuildStep>();
  for (const step of steps) {
    if (step.name === undefined) continue;
    if (byName.has(step.name)) {
      throw source.error(`${path}[${step.index}].name`, `two steps are named "${step.name}" (the first at line ${byName.get(step.name)!.line})`);
    }
    byName.set(step.name, step);
  }
  for (const step of steps) {
    if (step.from === undefined) continue;
    const parent = byName.get(step.from);
    if (!parent) throw source.error(`${path}[${step.index}].from`, `from = "${step.from}" names no step (names: ${names(steps)})`);
    if (parent === step) throw source.error(`${path}[${step.index}].from`, `step "${step.from}" cannot grow from itself`);
    step.parent = parent.index;
  }
  for (const step of steps) {
    const seen: BuildStep[] = [];
    for (let s: BuildStep | undefined = step; s; s = s.parent >= 0 ? steps[s.parent] : undefined) {
      if (seen.includes(s)) {
        const loop = seen.slice(seen.indexOf(s)).map((x) => `${x.name ?? `step ${x.index + 1}`} (line ${x.line})`);
        throw source.error(`${path}[${s.index}]`, `the steps form a cycle: ${loop.join(' -> ')} -> ${s.name ?? `step ${s.index + 1}`}`);
      }
      seen.push(s);
    }
  }
  for (const step of steps) delete step.from;
}

function names(steps: readonly BuildStep[]): string {
  const list = steps.map((s) => s.name).filter(Boolean);
  return list.length ? list.join(', ') : 'none';
}

/** Typed reads of one table's keys, each failing with the key's line. */
export class Fields {
  constructor(
    private readonly source: TomlSource,
    private readonly table: Record<string, unknown>,
    private readonly prefix: string,
  ) {}

  private path(key: string): string {
    return this.prefix ? `${this.prefix}.${key}` : key;
  }

  onlyKeys(allowed: readonly string[], what: string): void {
    for (const key of Object.keys(this.table)) {
      if (!allowed.includes(key)) throw this.source.error(this.path(key), `unknown key "${key}" in ${what} (expected one of: ${allowed.join(', ')})`);
    }
  }

  string(key: string): string | undefined {
    const v = this.table[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw this.source.error(this.path(key), `${key} must be a string`);
    return v;
  }

  integer(key: string, min: number): number | undefined {
    const v = this.table[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' && typeof v !== 'bigint') throw this.source.error(this.path(key), `${key} must be a whole number`);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw this.source.error(this.path(key), `${key} must be a whole number >= ${min}`);
    return n;
  }

  boolean(key: string): boolean | undefined {
    const v = this.table[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') throw this.source.error(this.path(key), `${key} must be true or false`);
    return v;
  }

  /** A string runs under `/bin/sh -c`; an array of strings is the argv itself. */
  command(key: string): string[] | undefined {
    const v = this.table[key];
    if (v === undefined) return undefined;
    if (typeof v === 'string') {
      if (!v.trim()) throw this.source.error(this.path(key), `${key} must not be empty`);
      return ['/bin/sh', '-c', v];
    }
    if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string')) return v as string[];
    throw this.source.error(this.path(key), `${key} must be a string (run by /bin/sh -c) or a non-empty array of strings`);
  }

  /** `{ KEY = "value" }` -> ["KEY=value"]. */
  stringTable(key: string): string[] | undefined {
    const v = this.table[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw this.source.error(this.path(key), `${key} must be a table: ${key} = { NAME = "value" }`);
    return Object.entries(v).map(([name, value]) => {
      if (typeof value !== 'string') throw this.source.error(this.path(key), `${key}.${name} must be a string`);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw this.source.error(this.path(key), `"${name}" is not a valid environment variable name`);
      return `${name}=${value}`;
    });
  }
}

/** `volumes = ["cache:/root/.cache", "data:/data:ro"]`: named volumes, as `run -v` takes them (no host folders: steps are snapshotted). */
function readVolumes(source: TomlSource, raw: unknown, path: string): string[] | undefined {
  if (raw === undefined) return undefined;
  const bad = (why: string) => source.error(path, `volumes = ["NAME:/guest/path[:ro]", ...]: ${why}`);
  if (!Array.isArray(raw) || raw.some((v) => typeof v !== 'string')) throw bad('an array of strings');
  const texts = raw as string[];
  let mounts;
  try {
    mounts = parseMounts(texts);
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (mounts.hostFolders.length) throw bad('host folders cannot be in a build (its steps are snapshotted); use copy steps');
  return texts.length ? texts : undefined;
}
