import { CellError, ErrorCodes } from '../../domain/errors.js';
import { parseChallenge, type AuthChallenge } from './challenge.js';
import type { Credential } from './credentials.js';
import { readBodyPrefix } from './body.js';

/**
 * Answers a registry's `WWW-Authenticate` challenge. Basic: the stored credential. Bearer: a token
 * from the challenge's realm for exactly the scopes the request needs (`repository:NAME:pull`),
 * fetched with the credential if there is one, anonymously otherwise, and reused per scope set
 * until shortly before it expires. Once a registry has challenged, later requests send
 * credentials up front instead of paying a 401 round trip each time.
 */
const TOKEN_SLACK_MS = 10_000;
/** The distribution spec's default when a token response gives no expires_in. */
const DEFAULT_TOKEN_SECONDS = 60;
/** How long a token is reused at most, whatever the token server says. */
const MAX_TOKEN_SECONDS = 24 * 3600;
/** A token answer is a few kilobytes; more is not one. */
const MAX_TOKEN_ANSWER = 1024 * 1024;

export type FetchFn = typeof fetch;

export class Authenticator {
  private challenge: AuthChallenge | undefined;
  private readonly tokens = new Map<string, { token: string; expiresAt: number }>();

  constructor(
    private readonly registry: string,
    private readonly credential: Credential | undefined,
    private readonly fetchFn: FetchFn = fetch,
  ) {}

  /** The Authorization header to send before any challenge (after the first one was seen). */
  async headerFor(scopes: readonly string[]): Promise<string | undefined> {
    if (!this.challenge) return undefined;
    return this.answer(this.challenge, scopes);
  }

  /** Handles a 401: remembers the challenge, returns the header to retry with. */
  async onUnauthorized(res: Response, scopes: readonly string[]): Promise<string> {
    const challenge = parseChallenge(res.headers.get('www-authenticate'));
    if (!challenge) throw this.denied('the registry answered 401 without a WWW-Authenticate challenge');
    // A new challenge (e.g. a token rejected for a scope it lacks) drops what we cached for it.
    const key = scopeKey(scopes);
    this.tokens.delete(key);
    this.challenge = challenge;
    const header = await this.answer(challenge, scopes);
    if (!header) throw this.denied(`authentication required (run login for ${this.registry})`);
    return header;
  }

  private denied(why: string): CellError {
    return new CellError(ErrorCodes.UNAUTHORIZED, `${this.registry}: ${why}`, { registry: this.registry });
  }

  private async answer(challenge: AuthChallenge, scopes: readonly string[]): Promise<string | undefined> {
    if (challenge.scheme === 'basic') {
      return this.credential ? basicHeader(this.credential) : undefined;
    }
    if (challenge.scheme !== 'bearer') throw this.denied(`unsupported authentication scheme ${challenge.scheme}`);
    const key = scopeKey(scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > Date.now() + TOKEN_SLACK_MS) return `Bearer ${cached.token}`;
    const token = await this.fetchToken(challenge, scopes);
    return `Bearer ${token}`;
  }

  private async fetchToken(challenge: AuthChallenge, scopes: readonly string[]): Promise<string> {
    const realm = challenge.params.realm;
    if (!realm) throw this.denied('the bearer challenge has no realm');
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw this.denied(`the token realm "${realm}" is not a URL`);
    }
    if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
    for (const s of scopes) url.searchParams.append('scope', s);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.credential) headers.authorization = basicHeader(this.credential);
    let res: Response;
    try {
      res = await this.fetchFn(url, { headers });
    } catch (err) {
      throw new CellError(ErrorCodes.REGISTRY_ERROR, `${this.registry}: cannot reach the token server ${url.origin}: ${(err as Error).message}`);
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw this.denied(this.credential ? `the token server refused user ${this.credential.username} (wrong password?)` : 'the token server refused anonymous access');
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new CellError(ErrorCodes.REGISTRY_ERROR, `${this.registry}: token server answered ${res.status}`);
    }
    // The token server's answer is input like any other: bounded, and typed before use.
    const { bytes, truncated } = await readBodyPrefix(res, MAX_TOKEN_ANSWER);
    if (truncated) throw new CellError(ErrorCodes.REGISTRY_ERROR, `${this.registry}: the token server's answer is larger than ${MAX_TOKEN_ANSWER} bytes`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(bytes.toString('utf8'));
    } catch {
      parsed = {};
    }
    const body = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    const token = body.token || body.access_token;
    if (!token) throw new CellError(ErrorCodes.REGISTRY_ERROR, `${this.registry}: the token server's answer has no token`);
    // It goes into an Authorization header: visible ASCII only (a bearer token's alphabet is smaller still).
    if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
      throw new CellError(ErrorCodes.REGISTRY_ERROR, `${this.registry}: the token server's answer has a token that is not a printable string`);
    }
    const issued = typeof body.issued_at === 'string' && body.issued_at ? Date.parse(body.issued_at) : NaN;
    const start = Number.isFinite(issued) && issued <= Date.now() ? issued : Date.now();
    const seconds = typeof body.expires_in === 'number' && body.expires_in > 0 ? Math.min(body.expires_in, MAX_TOKEN_SECONDS) : DEFAULT_TOKEN_SECONDS;
    this.tokens.set(scopeKey(scopes), { token, expiresAt: start + seconds * 1000 });
    return token;
  }
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}

export function basicHeader(c: Credential): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}
