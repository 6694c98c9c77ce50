import http from 'node:http';
import { createInterface } from 'node:readline';
import type { ErrorBody, StreamEvent } from '../api/schemas.js';
import { CellError, ErrorCodes, type ErrorCode } from '../domain/errors.js';

const KNOWN_CODES = new Set<string>(Object.values(ErrorCodes));

function toError(body: unknown, status: number): CellError {
  const error = (body as Partial<ErrorBody> | undefined)?.error;
  if (error?.code && error.message) {
    const code = (KNOWN_CODES.has(error.code) ? error.code : ErrorCodes.INTERNAL) as ErrorCode;
    return new CellError(code, error.message, error.details);
  }
  return new CellError(ErrorCodes.INTERNAL, `celld answered HTTP ${status}`);
}

function connectionError(err: NodeJS.ErrnoException, socketPath: string): CellError {
  if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
    return new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld is not running (no answer on ${socketPath})`);
  }
  return new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `cannot talk to celld on ${socketPath}: ${err.message}`);
}

/** HTTP over celld's unix socket: JSON calls and ndjson streams, errors as CellError. */
export class Transport {
  private readonly agent = new http.Agent({ keepAlive: true });

  constructor(readonly socketPath: string) {}

  private open(method: string, path: string, body: unknown, signal?: AbortSignal, contentType = 'application/json') {
    const payload = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body));
    return http.request({
      socketPath: this.socketPath,
      agent: this.agent,
      method,
      path,
      signal,
      headers: payload ? { 'content-type': contentType, 'content-length': payload.length } : {},
    });
  }

  /** One JSON request; resolves with the parsed body (undefined for 204). */
  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const req = this.open(method, path, body);
      req.on('error', (err: NodeJS.ErrnoException) => reject(connectionError(err, this.socketPath)));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            parsed = undefined;
          }
          if ((res.statusCode ?? 500) >= 400) reject(toError(parsed, res.statusCode ?? 500));
          else resolve(parsed as T);
        });
      });
      if (body !== undefined) req.write(Buffer.from(JSON.stringify(body)));
      req.end();
    });
  }

  /** A streaming request: yields each ndjson event; an `error` event is thrown as CellError. */
  async *stream(method: string, path: string, body?: unknown, signal?: AbortSignal): AsyncGenerator<StreamEvent> {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = this.open(method, path, body, signal);
      req.on('error', (err: NodeJS.ErrnoException) =>
        reject(err.name === 'AbortError' ? new CellError(ErrorCodes.INTERNAL, 'aborted') : connectionError(err, this.socketPath)),
      );
      req.on('response', resolve);
      if (body !== undefined) req.write(Buffer.from(JSON.stringify(body)));
      req.end();
    });
    if ((res.statusCode ?? 500) >= 400) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      let parsed: unknown;
      try {
        parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        parsed = undefined;
      }
      throw toError(parsed, res.statusCode ?? 500);
    }
    const lines = createInterface({ input: res, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (!line.trim()) continue;
        const event = JSON.parse(line) as StreamEvent;
        if (event.type === 'error') throw toError({ error: event.error }, 500);
        yield event;
      }
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof CellError) throw err;
      throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `the stream from celld broke: ${(err as Error).message}`);
    }
  }

  /** Streams raw bytes as a request body (stdin of an exec). */
  upload(path: string, source: AsyncIterable<Buffer | string>): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const req = http.request({
        socketPath: this.socketPath,
        method: 'POST',
        path,
        headers: { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' },
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(connectionError(err, this.socketPath)));
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => ((res.statusCode ?? 500) >= 400 ? reject(new CellError(ErrorCodes.INTERNAL, `stdin upload failed: HTTP ${res.statusCode}`)) : resolve()));
      });
      void (async () => {
        try {
          for await (const chunk of source) {
            if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
          }
        } finally {
          req.end();
        }
      })();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
