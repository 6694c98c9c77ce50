import http from 'node:http';
import type { TSchema } from '@sinclair/typebox';
import {
  pathFor,
  queryString,
  type BodyOf,
  type ErrorBody,
  type ErrorEvent,
  type EventOf,
  type JsonRoute,
  type ParamsOf,
  type QueryOf,
  type ReplyOf,
  type RouteDef,
  type StreamRoute,
} from '../api/contract.js';
import { CellError, ErrorCodes, type ErrorCode } from '../domain/errors.js';
import { ndjsonLines } from './ndjson.js';
import { callSignal, type RequestOptions } from './options.js';

/** What a call of a route sends: its path params, query and JSON body, each required when the route has one. */
export type CallInput<R extends RouteDef> = (R extends { params: TSchema } ? { params: ParamsOf<R> } : { params?: undefined }) &
  (R extends { query: TSchema } ? { query?: QueryOf<R> } : { query?: undefined }) &
  (R extends { body: TSchema } ? { body: BodyOf<R> } : { body?: undefined });

/** A route whose request body is raw bytes. */
export type UploadRoute = RouteDef & { body: 'octet-stream' };

const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));

/** An error body (or an `error` stream event) as a CellError; unknown codes become `internal`. */
export function toCellErrorFromBody(body: unknown, status: number): CellError {
  const error = (body as Partial<ErrorBody> | undefined)?.error;
  if (error && typeof error.code === 'string' && typeof error.message === 'string') {
    const code = (KNOWN_CODES.has(error.code) ? error.code : ErrorCodes.INTERNAL) as ErrorCode;
    return new CellError(code, error.message, error.details);
  }
  return new CellError(ErrorCodes.INTERNAL, `celld answered HTTP ${status} without an error body`);
}

function connectionError(err: NodeJS.ErrnoException, socketPath: string): CellError {
  if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
    return new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld is not running (nothing answers on ${socketPath})`, undefined, { cause: err });
  }
  // A remote celld's own certificate (celld --listen made it): trusted only when pinned.
  const untrusted = err.code === 'DEPTH_ZERO_SELF_SIGNED_CERT' || err.code === 'SELF_SIGNED_CERT_IN_CHAIN' || err.code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE';
  const hint = untrusted ? ' (set CELL_TLS_FINGERPRINT to the fingerprint celld printed, or CELL_TLS_CA to a CA file)' : '';
  return new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `cannot talk to celld on ${socketPath}: ${err.message}${hint}`, undefined, { cause: err });
}

/** What an aborted call rejects with: the signal's reason (an AbortError by default), like fetch. */
export function abortReason(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  return new DOMException(typeof reason === 'string' ? reason : 'the operation was aborted', 'AbortError');
}

async function readBody(res: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** celld on this host (its unix socket), or elsewhere (its TCP listener, with a bearer token: docs/remote.md). */
export type TransportEndpoint =
  | { socketPath: string }
  | { url: URL; token?: string; agent: http.Agent; request: typeof http.request };

/**
 * HTTP over celld's unix socket or its TCP listener: JSON calls, ndjson streams and raw uploads. Every failure is a
 * CellError (`daemon_unavailable` when nothing answers), except an abort by the caller's signal.
 */
export class Transport {
  private readonly agent: http.Agent;
  /** The socket path or URL, for messages. */
  readonly where: string;
  private readonly target: http.RequestOptions;
  private readonly requestFn: typeof http.request;
  /** Starts celld when a request finds nothing listening (CellClient.connect's `lazy`); once. */
  private startDaemon?: () => Promise<void>;
  private daemonStart?: Promise<void>;
  private starting = false;

  constructor(readonly endpoint: TransportEndpoint) {
    if ('socketPath' in endpoint) {
      // `servername: ''`: otherwise the agent asks whether the socket's host name is an IP address (a
      // TLS name for HTTPS only), and Node's first IPv6 check compiles a large regular expression: ~8 ms
      // of every short-lived `cell` command.
      this.agent = new http.Agent({ keepAlive: true, servername: '' } as http.AgentOptions);
      this.where = endpoint.socketPath;
      this.target = { socketPath: endpoint.socketPath };
      this.requestFn = http.request;
    } else {
      this.agent = endpoint.agent;
      this.where = endpoint.url.origin;
      this.target = {
        protocol: endpoint.url.protocol,
        hostname: endpoint.url.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: endpoint.url.port || (endpoint.url.protocol === 'https:' ? 443 : 80),
      };
      this.requestFn = endpoint.request;
    }
  }

  /** The request options every request starts from: where celld is, and the token for a remote one. */
  private options(method: string, path: string, headers: http.OutgoingHttpHeaders, signal?: AbortSignal): http.RequestOptions {
    const token = 'token' in this.endpoint ? this.endpoint.token : undefined;
    return { ...this.target, agent: this.agent, method, path, signal, headers: token ? { ...headers, authorization: `Bearer ${token}` } : headers };
  }

  /** A socket path: celld on this host, started on demand. */
  get isLocal(): boolean {
    return 'socketPath' in this.endpoint;
  }

  whenNoDaemon(start: () => Promise<void>): void {
    this.startDaemon = start;
  }

  /**
   * Sends a request and resolves with the response headers received (any status). With a daemon
   * starter, a request that could not connect (so was never received) starts celld and goes again.
   */
  private async send(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<http.IncomingMessage> {
    try {
      return await this.sendOnce(method, path, body, signal);
    } catch (err) {
      const cause = (err as { cause?: NodeJS.ErrnoException }).cause;
      // While starting, the starter's own pings must fail plainly, not wait for the start.
      if (!this.startDaemon || this.starting || !(err instanceof CellError) || (cause?.code !== 'ENOENT' && cause?.code !== 'ECONNREFUSED')) throw err;
      this.daemonStart ??= (async () => {
        this.starting = true;
        try {
          await this.startDaemon!();
        } finally {
          this.starting = false;
        }
      })();
      await this.daemonStart;
      return this.sendOnce(method, path, body, signal);
    }
  }

  private sendOnce(method: string, path: string, body: unknown, signal?: AbortSignal): Promise<http.IncomingMessage> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = this.requestFn(this.options(method, path, payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}, signal));
      req.on('error', (err: NodeJS.ErrnoException) => reject(signal?.aborted ? abortReason(signal) : connectionError(err, this.where)));
      req.on('response', resolve);
      req.end(payload);
    });
  }

  /** One JSON route of the contract; resolves with its reply (undefined for 204). */
  call<R extends JsonRoute>(def: R, input: CallInput<R>, opts: RequestOptions = {}): Promise<ReplyOf<R>> {
    return this.request<ReplyOf<R>>(def.method, urlOf(def, input), input.body, callSignal(opts));
  }

  /** A stream route of the contract: its events as they arrive (see `rawStream`). */
  stream<R extends StreamRoute>(def: R, input: CallInput<R>, opts: RequestOptions = {}): AsyncGenerator<EventOf<R>> {
    return this.rawStream(def.method, urlOf(def, input), input.body, callSignal(opts)) as AsyncGenerator<EventOf<R>>;
  }

  /**
   * A raw-body route of the contract. `signal` (or `timeoutMs`) aborts the request; `endSignal`
   * instead stops reading `source` and ends the body there (the stdin of an exec).
   */
  upload<R extends UploadRoute>(
    def: R,
    input: CallInput<R>,
    source: AsyncIterable<Buffer | string>,
    opts: RequestOptions & { endSignal?: AbortSignal } = {},
  ): Promise<ReplyOf<R>> {
    return this.rawUpload(urlOf(def, input), source, callSignal(opts), opts.endSignal) as Promise<ReplyOf<R>>;
  }

  /** One JSON request; resolves with the parsed body (undefined for 204). */
  private async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const res = await this.send(method, path, body, signal);
    let parsed: unknown;
    try {
      parsed = await readBody(res);
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      throw connectionError(err as NodeJS.ErrnoException, this.where);
    }
    if ((res.statusCode ?? 500) >= 400) throw toCellErrorFromBody(parsed, res.statusCode ?? 500);
    return parsed as T;
  }

  /**
   * A streaming request: yields each ndjson event as it arrives; an `error` event is thrown as a
   * CellError. Leaving the loop early (break, or an exception in the loop body) closes the
   * connection, which celld takes as a cancellation.
   */
  private async *rawStream(method: string, path: string, body?: unknown, signal?: AbortSignal): AsyncGenerator<unknown> {
    const res = await this.send(method, path, body, signal);
    if ((res.statusCode ?? 500) >= 400) throw toCellErrorFromBody(await readBody(res).catch(() => undefined), res.statusCode ?? 500);
    let finished = false;
    try {
      for await (const line of ndjsonLines(res)) {
        if (!line.trim()) continue;
        let event: { type?: unknown };
        try {
          event = JSON.parse(line) as { type?: unknown };
        } catch {
          throw new CellError(ErrorCodes.INTERNAL, `celld sent a stream line that is not JSON: ${line.slice(0, 80)}`);
        }
        if (event.type === 'error') throw toCellErrorFromBody({ error: (event as ErrorEvent).error }, 500);
        yield event;
      }
      finished = true;
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      if (err instanceof CellError) throw err;
      throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `the connection to celld broke: ${(err as Error).message}`, undefined, { cause: err });
    } finally {
      if (!finished) res.destroy();
    }
  }

  /**
   * Streams raw bytes as a request body; resolves with the parsed answer once celld has taken the
   * whole body. `signal` aborts the request; when `endSignal` aborts, reading `source` stops and
   * the body ends there.
   */
  private rawUpload(path: string, source: AsyncIterable<Buffer | string>, signal?: AbortSignal, endSignal?: AbortSignal): Promise<unknown> {
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<unknown>((resolve, reject) => {
      const req = this.requestFn(this.options('POST', path, { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' }, signal));
      const failed = (err: NodeJS.ErrnoException) => reject(signal?.aborted ? abortReason(signal) : connectionError(err, this.where));
      req.on('error', failed);
      req.on('response', (res) => {
        readBody(res).then(
          (parsed) => ((res.statusCode ?? 500) >= 400 ? reject(toCellErrorFromBody(parsed, res.statusCode ?? 500)) : resolve(parsed)),
          failed,
        );
      });
      void pump(source, req, endSignal);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** The concrete URL of a route call: path params filled in, query appended. */
function urlOf(def: RouteDef, input: { params?: object; query?: object }): string {
  return pathFor(def, input.params as Record<string, string> | undefined) + queryString(input.query);
}

/** Copies `source` into `req` with backpressure; an abort stops reading `source` and ends `req`. */
async function pump(source: AsyncIterable<Buffer | string>, req: http.ClientRequest, signal?: AbortSignal): Promise<void> {
  const it = source[Symbol.asyncIterator]();
  const stop = new Promise<'aborted' | 'closed'>((resolve) => {
    if (signal?.aborted) resolve('aborted');
    signal?.addEventListener('abort', () => resolve('aborted'), { once: true });
    req.once('close', () => resolve('closed'));
  });
  try {
    for (;;) {
      const pending = it.next();
      pending.catch(() => {}); // it may settle after we stopped waiting for it
      const next = await Promise.race([pending, stop]);
      if (typeof next === 'string') {
        // The source may wait for input that never comes (a terminal): close it.
        void Promise.resolve(it.return?.()).catch(() => {});
        if (next === 'aborted') req.end();
        return;
      }
      if (next.done) break;
      if (!req.write(next.value)) await Promise.race([new Promise((r) => req.once('drain', r)), stop]);
    }
    req.end();
  } catch (err) {
    req.destroy(err as Error);
  }
}
