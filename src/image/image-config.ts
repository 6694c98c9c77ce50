import { CellError, ErrorCodes } from '../domain/errors.js';
import type { ImageConfig } from '../domain/image.js';
import type { Platform } from './platform.js';

/** What cellvm reads from an image's config blob. */
export interface ParsedImageConfig {
  config: ImageConfig;
  platform: Partial<Platform>;
  /** sha256 of each layer's uncompressed tar, in order (OCI `rootfs.diff_ids`). */
  diffIds: string[];
}

function stringArray(value: unknown): string[] | null | undefined {
  if (value === null) return null;
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value as string[];
  return undefined;
}

/** Parses the config blob; unknown or ill-typed fields are dropped rather than trusted. */
export function parseImageConfig(bytes: Buffer, what: string): ParsedImageConfig {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new CellError(ErrorCodes.REGISTRY_ERROR, `${what} is not valid JSON`);
  }
  if (typeof doc !== 'object' || doc === null) throw new CellError(ErrorCodes.REGISTRY_ERROR, `${what} is not a JSON object`);
  const c = (typeof doc.config === 'object' && doc.config !== null ? doc.config : {}) as Record<string, unknown>;
  const config: ImageConfig = {};
  const entrypoint = stringArray(c.Entrypoint);
  if (entrypoint !== undefined) config.Entrypoint = entrypoint;
  const cmd = stringArray(c.Cmd);
  if (cmd !== undefined) config.Cmd = cmd;
  const env = stringArray(c.Env);
  if (env !== undefined) config.Env = env;
  if (typeof c.WorkingDir === 'string' && c.WorkingDir) config.WorkingDir = c.WorkingDir;
  if (typeof c.User === 'string' && c.User) config.User = c.User;

  const platform: Partial<Platform> = {};
  if (typeof doc.os === 'string') platform.os = doc.os;
  if (typeof doc.architecture === 'string') platform.architecture = doc.architecture;
  if (typeof doc.variant === 'string' && doc.variant) platform.variant = doc.variant;
  const rootfs = doc.rootfs as Record<string, unknown> | undefined;
  const diffIds = stringArray(rootfs?.diff_ids) ?? [];
  return { config, platform, diffIds };
}
