import {
  BEARER_SUBPROTOCOL_PREFIX,
  pathFor,
  queryString,
  type EventOf,
  type JsonRoute,
  type ParamsOf,
  type QueryOf,
  type ReplyOf,
  type SocketRoute,
  type StreamRoute,
} from '../api/contract.js';

/** An error celld answered with (its stable code and one-line message), or a network failure. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

interface Input<R extends JsonRoute | StreamRoute | SocketRoute> {
  params?: ParamsOf<R>;
  query?: QueryOf<R>;
  body?: unknown;
}

/**
 * celld's API from the page: the same route table as the SDK and the server (src/api), the token
 * as a bearer header (or, on a WebSocket, as its second subprotocol). A 401 signs the page out.
 */
export class Client {
  constructor(
    private readonly token: string,
    private readonly onUnauthenticated: (message: string) => void,
  ) {}

  async call<R extends JsonRoute>(def: R, input: Input<R> = {}): Promise<ReplyOf<R>> {
    const res = await this.fetch(def, input);
    if (res.status === 204) return undefined as ReplyOf<R>;
    return (await res.json()) as ReplyOf<R>;
  }

  /** Calls `onEvent` for each event of an NDJSON stream until it ends, fails, or `signal` aborts. */
  async stream<R extends StreamRoute>(def: R, input: Input<R>, onEvent: (event: EventOf<R>) => void, signal: AbortSignal): Promise<void> {
    const res = await this.fetch(def, input, signal);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffered += value;
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (!line.trim()) continue;
          const event = JSON.parse(line) as { type: string; error?: { code: string; message: string } };
          if (event.type === 'error' && event.error) throw new ApiError(event.error.code, event.error.message, 200);
          onEvent(event as EventOf<R>);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /** A WebSocket to a socket route of this page's origin, the token riding as a subprotocol. */
  socket<R extends SocketRoute>(def: R, input: Input<R>): WebSocket {
    const url = new URL(pathFor(def, (input.params ?? {}) as Record<string, string>) + queryString(input.query ?? {}), location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const socket = new WebSocket(url, [def.reply.subprotocol, `${BEARER_SUBPROTOCOL_PREFIX}${this.token}`]);
    socket.binaryType = 'arraybuffer';
    return socket;
  }

  private async fetch(def: JsonRoute | StreamRoute, input: Input<JsonRoute | StreamRoute>, signal?: AbortSignal): Promise<Response> {
    const url = pathFor(def, (input.params ?? {}) as Record<string, string>) + queryString(input.query ?? {});
    const headers: Record<string, string> = { authorization: `Bearer ${this.token}` };
    if (input.body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(url, { method: def.method, headers, body: input.body === undefined ? undefined : JSON.stringify(input.body), signal });
    } catch (err) {
      if (signal?.aborted) throw err;
      throw new ApiError('unavailable', `celld did not answer (${(err as Error).message})`, 0);
    }
    if (res.ok) return res;
    const error = ((await res.json().catch(() => ({}))) as { error?: { code: string; message: string } }).error ?? { code: 'internal', message: `HTTP ${res.status}` };
    if (res.status === 401) this.onUnauthenticated(error.message);
    throw new ApiError(error.code, error.message, res.status);
  }
}
