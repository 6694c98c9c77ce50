import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { formatToken, isExpired, parseToken, validateScope, type TokenRecord } from '../domain/api-token.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { validateName } from '../domain/ids.js';
import type { TokenStore } from '../store/token-store.js';

const hashOf = (secret: string) => createHash('sha256').update(secret).digest();

/** `cell token create/ls/rm` and the check of a bearer token on the TCP listener (docs/remote.md). */
export class Tokens {
  private readonly revokedListeners = new Set<(id: string) => void>();

  constructor(private readonly store: TokenStore) {}

  /** Called with a token's id once it is revoked (the TCP listener ends that token's open streams); returns the unsubscribe. */
  onRevoked(listener: (id: string) => void): () => void {
    this.revokedListeners.add(listener);
    return () => this.revokedListeners.delete(listener);
  }

  /** A new token; its secret is in the answer only (the store keeps its hash). */
  create(req: { name: string; scope?: string; expiresInMs?: number }, now = Date.now()): { token: TokenRecord; secret: string } {
    const name = validateName(req.name);
    const scope = validateScope(req.scope ?? 'write');
    if (req.expiresInMs !== undefined && !(Number.isFinite(req.expiresInMs) && req.expiresInMs > 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'a token expires a positive time from now');
    }
    if (this.store.byName(name)) throw new CellError(ErrorCodes.CONFLICT, `a token named "${name}" exists: remove it first (cell token rm ${name})`);
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const token: TokenRecord = {
      id,
      name,
      scope,
      createdAt: new Date(now).toISOString(),
      expiresAt: req.expiresInMs === undefined ? null : new Date(now + req.expiresInMs).toISOString(),
      lastUsedAt: null,
    };
    this.store.insert(token, hashOf(secret).toString('hex'));
    return { token, secret: formatToken(id, secret) };
  }

  list(): TokenRecord[] {
    return this.store.list();
  }

  /** By name or id. */
  remove(ref: string): void {
    const token = this.store.byName(ref) ?? this.store.get(ref);
    if (!token || !this.store.delete(token.id)) throw new CellError(ErrorCodes.NOT_FOUND, `no token named or with id "${ref}"`);
    for (const listener of this.revokedListeners) listener(token.id);
  }

  /**
   * The token an `Authorization: Bearer ...` value stands for. Every failure is `unauthenticated`
   * with the same words, whether the token is malformed, unknown, revoked or wrong: only expiry is
   * told apart (its holder knows the token was real).
   */
  verify(header: string | undefined, now = Date.now()): TokenRecord {
    const denied = (why = 'a valid bearer token is required (Authorization: Bearer cell_...; cell token create makes one)') =>
      new CellError(ErrorCodes.UNAUTHENTICATED, why);
    const m = header ? /^Bearer\s+(\S+)$/i.exec(header.trim()) : null;
    const parsed = m ? parseToken(m[1]!) : null;
    if (!parsed) throw denied();
    const found = this.store.withHash(parsed.id);
    const given = hashOf(parsed.secret);
    // Compared even for an unknown id (against itself), so timing tells nothing about which ids exist.
    const expected = found ? Buffer.from(found.secretHash, 'hex') : given;
    if (!timingSafeEqual(given, expected) || !found) throw denied();
    if (isExpired(found.token, now)) throw denied(`the token "${found.token.name}" expired at ${found.token.expiresAt}`);
    this.store.touch(found.token.id, new Date(now).toISOString());
    return found.token;
  }
}
