import { CellError, ErrorCodes } from './errors.js';

/**
 * Bearer tokens for celld's TCP listener (docs/remote.md). A token is `cell_<id>_<secret>`: the id
 * finds its record, the secret (32 random bytes) is kept only as its SHA-256, compared in constant
 * time. A slow hash buys nothing for a random 256-bit secret.
 */
export const TOKEN_SCOPES = ['read', 'write', 'admin'] as const;
export type TokenScope = (typeof TOKEN_SCOPES)[number];

export interface TokenRecord {
  id: string;
  name: string;
  scope: TokenScope;
  createdAt: string;
  /** null: never expires. */
  expiresAt: string | null;
  lastUsedAt: string | null;
}

const TOKEN_PATTERN = /^cell_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;

export function formatToken(id: string, secret: string): string {
  return `cell_${id}_${secret}`;
}

/** The id and secret of a presented token, or null when it is not one of ours in form. */
export function parseToken(text: string): { id: string; secret: string } | null {
  const m = TOKEN_PATTERN.exec(text);
  return m ? { id: m[1]!, secret: m[2]! } : null;
}

export function validateScope(scope: string): TokenScope {
  if (!(TOKEN_SCOPES as readonly string[]).includes(scope)) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `invalid scope "${scope}": use read, write or admin`);
  }
  return scope as TokenScope;
}

/** Routes only an admin token reaches: tokens, the host's set-up (installs packages as root), celld's registry credentials. */
const ADMIN_ONLY = ['/v1/tokens', '/v1/setup', '/v1/registries/login', '/v1/registries/logout'];

/**
 * What a scope may do on a route (its pattern, as the router matched it): `read` only looks
 * (GET); `write` does everything a user of VMs does; `admin` also manages tokens, set-up and
 * registry credentials.
 */
export function scopeAllows(scope: TokenScope, method: string, path: string): boolean {
  if (scope === 'admin') return true;
  if (ADMIN_ONLY.some((p) => path === p || path.startsWith(`${p}/`))) return false;
  if (scope === 'write') return true;
  return method === 'GET' || method === 'HEAD';
}

export function isExpired(token: Pick<TokenRecord, 'expiresAt'>, now = Date.now()): boolean {
  return token.expiresAt !== null && Date.parse(token.expiresAt) <= now;
}
