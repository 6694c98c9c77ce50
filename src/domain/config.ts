import { CellError, ErrorCodes } from './errors.js';

/**
 * celld's settings, from CELL_HOME/config.json (like Docker's daemon.json), each overridable by an
 * environment variable of celld's. Everything is optional.
 *
 *   { "imageCacheMaxBytes": 20000000000, "insecureRegistries": ["registry.lan:5000"], "logMaxBytes": 16777216,
 *     "importMaxBytes": 50000000000, "poolMemoryMaxBytes": 4294967296 }
 */
export interface CellConfig {
  /** Least recently used images beyond this many bytes of base disks are evicted after each pull
   * or import (never one a VM or snapshot uses, never a built-in one). Env: CELL_IMAGE_CACHE_MAX_BYTES. */
  imageCacheMaxBytes?: number;
  /** Registries (host[:port]) reachable over plain http. Env: CELL_INSECURE_REGISTRIES (comma-separated). */
  insecureRegistries?: string[];
  /** A VM's output.log is rotated to output.log.1 past this size (two files kept; default 16 MiB). Env: CELL_LOG_MAX_BYTES. */
  logMaxBytes?: number;
  /** Image and snapshot archives whose members add up to more are refused before unpacking (free space is always checked). Env: CELL_IMPORT_MAX_BYTES. */
  importMaxBytes?: number;
  /** Spares of every pool together stop being made past this many bytes of their processes' PSS
   * (default: a quarter of the host's memory). Env: CELL_POOL_MEMORY_MAX_BYTES. */
  poolMemoryMaxBytes?: number;
  /** An absolute path to a guest kernel of your own (an ELF vmlinux with a PVH entry note, or a
   * bzImage) with the guest's drivers built in, booted instead of Debian's: see docs/guest-kernel.md.
   * Read when celld sets up its host. Env: CELL_GUEST_KERNEL. */
  guestKernel?: string;
}

const KEYS = ['imageCacheMaxBytes', 'insecureRegistries', 'logMaxBytes', 'importMaxBytes', 'poolMemoryMaxBytes', 'guestKernel'] as const;

/** Checks a parsed config.json; `where` names the file in errors. */
export function parseConfig(raw: unknown, where: string): CellConfig {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${where}: the settings must be a JSON object`);
  }
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${where}: unknown setting "${key}" (known: ${KEYS.join(', ')})`);
    }
  }
  const config: CellConfig = {};
  for (const key of ['imageCacheMaxBytes', 'importMaxBytes', 'poolMemoryMaxBytes'] as const) {
    if (obj[key] === undefined) continue;
    const n = obj[key];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${where}: ${key} must be a whole number of bytes`);
    }
    config[key] = n;
  }
  if (obj.logMaxBytes !== undefined) config.logMaxBytes = logMax(obj.logMaxBytes, `${where}: logMaxBytes`);
  if (obj.insecureRegistries !== undefined) {
    const list = obj.insecureRegistries;
    if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && x.length > 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${where}: insecureRegistries must be a list of host[:port] strings`);
    }
    config.insecureRegistries = list as string[];
  }
  if (obj.guestKernel !== undefined) config.guestKernel = kernelPath(obj.guestKernel, `${where}: guestKernel`);
  return config;
}

/** The environment's overrides on top of the file's settings. */
export function withEnvironment(config: CellConfig, env: NodeJS.ProcessEnv): CellConfig {
  const out = { ...config };
  for (const [name, key] of [
    ['CELL_IMAGE_CACHE_MAX_BYTES', 'imageCacheMaxBytes'],
    ['CELL_IMPORT_MAX_BYTES', 'importMaxBytes'],
    ['CELL_POOL_MEMORY_MAX_BYTES', 'poolMemoryMaxBytes'],
  ] as const) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${name} must be a whole number of bytes, not "${value}"`);
    out[key] = n;
  }
  if (env.CELL_LOG_MAX_BYTES !== undefined && env.CELL_LOG_MAX_BYTES !== '') out.logMaxBytes = logMax(Number(env.CELL_LOG_MAX_BYTES), 'CELL_LOG_MAX_BYTES');
  if (env.CELL_INSECURE_REGISTRIES) {
    out.insecureRegistries = env.CELL_INSECURE_REGISTRIES.split(',').map((s) => s.trim()).filter(Boolean);
  }
  if (env.CELL_GUEST_KERNEL) out.guestKernel = kernelPath(env.CELL_GUEST_KERNEL, 'CELL_GUEST_KERNEL');
  return out;
}

/** Absolute: celld's working directory is not the user's. */
function kernelPath(value: unknown, what: string): string {
  if (typeof value !== 'string' || !value.startsWith('/')) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} must be an absolute path to a kernel image`);
  return value;
}

/** At least 4 KiB (one line of output has to fit), at most 1 TiB. */
function logMax(n: unknown, what: string): number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 4096 || n > 2 ** 40) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what} must be a whole number of bytes from 4096 up`);
  }
  return n;
}
