import { CellError, ErrorCodes } from '../domain/errors.js';

/** An OCI platform: what the binaries in an image run on. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

/** cellvm boots x86-64 guests, so that is what an unqualified pull selects. */
export const DEFAULT_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };

/** Parses `os/arch[/variant]`, e.g. `linux/arm64` or `linux/arm/v7`. */
export function parsePlatform(text: string): Platform {
  const parts = text.trim().split('/');
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !/^[a-z0-9_.-]+$/i.test(p))) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `invalid platform "${text}": expected os/arch[/variant], e.g. linux/amd64`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return { os: os.toLowerCase(), architecture: architecture.toLowerCase(), ...(variant ? { variant: variant.toLowerCase() } : {}) };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, ...(p.variant ? [p.variant] : [])].join('/');
}

/** arm64 without a variant means v8; amd64 and others have no implicit variant worth comparing. */
function normalizedVariant(p: Partial<Platform>): string | undefined {
  if (p.variant) return p.variant;
  if (p.architecture === 'arm64') return 'v8';
  return undefined;
}

/** Whether `candidate` (from an index or config) satisfies `wanted`; a variant only narrows when asked for. */
export function platformMatches(wanted: Platform, candidate: Partial<Platform> | undefined): boolean {
  if (!candidate || candidate.os !== wanted.os || candidate.architecture !== wanted.architecture) return false;
  if (!wanted.variant) return true;
  return normalizedVariant(candidate) === normalizedVariant(wanted);
}
