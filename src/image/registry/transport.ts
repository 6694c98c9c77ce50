import { CellError, ErrorCodes } from '../../domain/errors.js';
import { isLoopbackHostname } from '../../domain/network.js';
import { registryApiHost } from '../reference.js';
import { Authenticator } from './authenticator.js';
import type { Credential } from './credentials.js';
import { backoffMs, DEFAULT_RETRY, isRetryableStatus, sleep, type RetryPolicy } from './retry.js';
import { readBodyPrefix } from './body.js';

/**
 * HTTP to one registry: picks the scheme, authenticates (see Authenticator), and retries
 * 429/5xx answers and failed connections with backoff. Bodies that are streams cannot be sent
 * twice, so requests with one are tried once (their callers retry the whole operation).
 */
export interface TransportOptions {
  registry: string;
  /** Registries (host[:port]) reached over plain http; loopback ones always are. */
  insecureRegistries?: readonly string[];
  credential?: Credential;
  retry?: RetryPolicy;
  signal?: AbortSignal;
}

export interface RequestOptions {
  method?: string;
  /** Auth scopes the request needs, e.g. `repository:library/busybox:pull`. */
  scopes: readonly string[];
  headers?: Record<string, string>;
  body?: RequestInit['body'];
  /** Only for replayable bodies (or none): retry on 429/5xx and network errors. */
  retry?: boolean;
}

const USER_AGENT = 'cellvm/0.1';

/** Whether a registry (`host[:port]`) is on this machine's loopback. */
export function isLoopbackHost(registry: string): boolean {
  return isLoopbackHostname(registry.replace(/:\d+$/, ''));
}

export class RegistryTransport {
  readonly base: string;
  readonly auth: Authenticator;
  readonly retry: RetryPolicy;
  readonly signal: AbortSignal | undefined;

  constructor(readonly opts: TransportOptions) {
    const host = registryApiHost(opts.registry);
    const plain = isLoopbackHost(host) || (opts.insecureRegistries ?? []).includes(opts.registry);
    this.base = `${plain ? 'http' : 'https'}://${host}`;
    this.auth = new Authenticator(opts.registry, opts.credential);
    this.retry = opts.retry ?? DEFAULT_RETRY;
    this.signal = opts.signal;
  }

  url(pathOrUrl: string): string {
    return new URL(pathOrUrl, this.base).toString();
  }

  async request(pathOrUrl: string, opts: RequestOptions): Promise<Response> {
    const url = this.url(pathOrUrl);
    const method = opts.method ?? 'GET';
    const retryable = opts.retry ?? (method === 'GET' || method === 'HEAD');
    let authRetried = false;
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, 'accept-encoding': 'identity', ...opts.headers };
      const auth = await this.auth.headerFor(opts.scopes);
      if (auth) headers.authorization = auth;
      let res: Response;
      try {
        res = await fetch(url, { method, headers, body: opts.body, redirect: 'follow', signal: this.signal, ...(isStream(opts.body) ? { duplex: 'half' } : {}) } as RequestInit);
      } catch (err) {
        if (this.signal?.aborted) throw err;
        if (retryable && attempt + 1 < this.retry.attempts) {
          await sleep(backoffMs(this.retry, attempt), this.signal);
          continue;
        }
        throw new CellError(ErrorCodes.REGISTRY_ERROR, `cannot reach ${this.opts.registry} (${method} ${new URL(url).pathname}): ${causeOf(err)}`, undefined, { cause: err });
      }
      if (res.status === 401 && !authRetried && (retryable || opts.body === undefined)) {
        await res.body?.cancel();
        await this.auth.onUnauthorized(res, opts.scopes);
        authRetried = true;
        attempt--;
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        const detail = await errorText(res);
        throw new CellError(ErrorCodes.UNAUTHORIZED, `${this.opts.registry}: access denied (${res.status}${detail ? `: ${detail}` : ''})`, {
          registry: this.opts.registry,
          status: res.status,
        });
      }
      if (isRetryableStatus(res.status) && retryable && attempt + 1 < this.retry.attempts) {
        await res.body?.cancel();
        await sleep(backoffMs(this.retry, attempt, res.headers.get('retry-after')), this.signal);
        continue;
      }
      return res;
    }
  }
}

function isStream(body: unknown): boolean {
  return typeof body === 'object' && body !== null && typeof (body as ReadableStream).getReader === 'function';
}

function causeOf(err: unknown): string {
  const e = err as Error & { cause?: Error & { code?: string } };
  return e.cause ? `${e.cause.code ?? ''} ${e.cause.message}`.trim() : e.message;
}

/** The most of an error body read: its message is a line in an error, not a download. */
const MAX_ERROR_BODY = 64 * 1024;
/** The most of a registry's own error message kept. */
const MAX_ERROR_TEXT = 200;

/** A registry's words, made safe for a one-line message: short, no control characters. */
function oneLine(text: string): string {
  const clean = text.replace(/[\x00-\x1f\x7f\u0080-\u009f]+/g, ' ').trim();
  return clean.length > MAX_ERROR_TEXT ? `${clean.slice(0, MAX_ERROR_TEXT)}...` : clean;
}

/**
 * The message of an OCI error body (`{"errors":[{"code","message"}]}`), or the status text. The
 * body is the registry's: at most 64 KiB of it is read, and what is kept is one short line.
 */
export async function errorText(res: Response): Promise<string> {
  const { bytes } = await readBodyPrefix(res, MAX_ERROR_BODY).catch(() => ({ bytes: Buffer.alloc(0) }));
  const text = bytes.toString('utf8');
  try {
    const body = JSON.parse(text) as { errors?: unknown };
    const first = Array.isArray(body?.errors) ? (body.errors[0] as { code?: unknown; message?: unknown } | undefined) : undefined;
    if (first && typeof first === 'object') {
      const said = [first.code, first.message].filter((v): v is string => typeof v === 'string' && v !== '').join(': ');
      if (said) return oneLine(said);
    }
  } catch {
    /* not JSON */
  }
  return oneLine(text) || res.statusText;
}

export function registryFailure(res: Response, what: string, detail: string): CellError {
  return new CellError(ErrorCodes.REGISTRY_ERROR, `${what}: the registry answered ${res.status}${detail ? ` (${detail})` : ''}`, { status: res.status });
}
