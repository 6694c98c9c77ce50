import type { FastifyInstance } from 'fastify';
import type { Socket } from 'node:net';
import { Api, allRoutes } from '../api/routes.js';
import { scopeAllows, type TokenRecord } from '../domain/api-token.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { HostFs } from '../engine/host-fs.js';
import type { Tokens } from '../engine/tokens.js';
import { setHostFs } from './caller-access.js';
import { bearerFromSubprotocols, isUpgrade } from './socket-protocol.js';
import { UI_PREFIX } from './ui-assets.js';

/**
 * The TCP listener's gate (docs/remote.md): every request carries a bearer token of the right
 * scope; host paths are refused (the caller is on another machine: a path there means nothing
 * here, and celld's own access to this host is not theirs to use); each token has a request rate
 * and a number of VM creates in flight it may not pass.
 */
export interface RemoteLimits {
  /** Requests a second per token, sustained; twice that at once. */
  requestsPerSecond: number;
  /** VM creates (create, run, fork, actions, builds) one token may have in flight. */
  concurrentCreates: number;
}

export const DEFAULT_REMOTE_LIMITS: RemoteLimits = { requestsPerSecond: 50, concurrentCreates: 8 };

const REFUSED = (): never => {
  throw new CellError(
    ErrorCodes.PERMISSION_DENIED,
    "host paths are refused over TCP: they would name files on celld's host, not yours (stream the contents instead: SDK files.write/read, or use celld's unix socket on its host)",
  );
};

/** A host file access that refuses every path. */
export const NO_HOST_FS: HostFs = new Proxy({} as HostFs, {
  get: (_target, name) => (name === 'who' ? 'a remote caller' : name === 'then' ? undefined : name === 'identity' ? REFUSED() : async () => REFUSED()),
});

/** GET routes that act rather than read: a terminal runs commands, so it takes a write token. */
const ACTING_GETS = new Set<string>([Api.vms.terminal.path]);

/** Routes that stay open (NDJSON streams, WebSockets): a revoked or expired token's are ended. */
const LASTING = new Set(allRoutes().filter((r) => r.reply.kind === 'ndjson' || r.reply.kind === 'websocket').map((r) => `${r.method} ${r.path}`));

const MAX_TIMER_MS = 2 ** 31 - 1;

/** Streams and terminals one token may hold open at once (logs -f, events, stats, runs, shells). */
export const MAX_OPEN_STREAMS = 32;

/** Route patterns that make VMs: runs, forks, and actions and builds (each boots VMs of its own). */
const CREATES = new Set<string>([Api.vms.create.path, Api.vms.run.path, Api.snapshots.fork.path, Api.actions.run.path, Api.builds.build.path, Api.templates.build.path]);

class Bucket {
  private tokens: number;
  private at = Date.now();
  constructor(private readonly rate: number) {
    this.tokens = rate * 2;
  }
  take(now = Date.now()): boolean {
    this.tokens = Math.min(this.rate * 2, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

export function checkTokens(app: FastifyInstance, tokens: Tokens, limits: RemoteLimits = DEFAULT_REMOTE_LIMITS): void {
  const buckets = new Map<string, Bucket>();
  const creating = new Map<string, number>();
  const HELD = Symbol('create');
  // The connections of each token's open streams: revoking the token ends them, as its expiry does.
  const lasting = new Map<string, Set<Socket>>();
  const unsubscribe = tokens.onRevoked((id) => {
    for (const socket of lasting.get(id) ?? []) socket.destroy();
    lasting.delete(id);
  });
  app.addHook('onClose', async () => unsubscribe());
  const holdOpen = (token: TokenRecord, socket: Socket, done: NodeJS.EventEmitter) => {
    let set = lasting.get(token.id);
    if (!set) lasting.set(token.id, (set = new Set()));
    set.add(socket);
    let expiry: NodeJS.Timeout | undefined;
    // Node's timers hold at most 2^31-1 ms (about 24.8 days; more fires at once): a far expiry waits in steps.
    const untilExpiry = () => {
      const left = Date.parse(token.expiresAt!) - Date.now();
      expiry = left <= 0 ? undefined : setTimeout(untilExpiry, Math.min(left, MAX_TIMER_MS));
      expiry?.unref();
      if (left <= 0) socket.destroy();
    };
    if (token.expiresAt !== null) untilExpiry();
    done.once('close', () => {
      clearTimeout(expiry);
      set.delete(socket);
      if (set.size === 0 && lasting.get(token.id) === set) lasting.delete(token.id);
    });
  };
  app.addHook('onRequest', async (req, reply) => {
    // The route fastify matched, not the URL as sent: `/v1/%74okens` is /v1/tokens to the router.
    // No route: the answer is a 404 whatever the scope.
    const path = req.routeOptions.url;
    // The dashboard's files: public (they hold no data; the page asks for a token).
    if (path === UI_PREFIX || path?.startsWith(`${UI_PREFIX}/`)) return;
    // A browser's WebSocket cannot carry an Authorization header: its token comes as a subprotocol.
    const header = req.headers.authorization ?? (isUpgrade(req.raw) ? bearerFromSubprotocols(req.headers['sec-websocket-protocol']) : undefined);
    const token: TokenRecord = tokens.verify(header);
    if (path === undefined) return;
    const method = ACTING_GETS.has(path) ? 'POST' : req.method;
    if (!scopeAllows(token.scope, method, path)) {
      throw new CellError(ErrorCodes.PERMISSION_DENIED, `the token "${token.name}" has the ${token.scope} scope: it may not ${req.method} ${path}`);
    }
    let bucket = buckets.get(token.id);
    if (!bucket) buckets.set(token.id, (bucket = new Bucket(limits.requestsPerSecond)));
    if (!bucket.take()) throw new CellError(ErrorCodes.RATE_LIMITED, `the token "${token.name}" sent more than ${limits.requestsPerSecond} requests a second: slow down`);
    if (req.method === 'POST' && CREATES.has(path)) {
      const n = creating.get(token.id) ?? 0;
      if (n >= limits.concurrentCreates) {
        throw new CellError(ErrorCodes.RATE_LIMITED, `the token "${token.name}" has ${n} VM creates in flight, its most: wait for one to finish`);
      }
      creating.set(token.id, n + 1);
      (req as unknown as Record<symbol, string>)[HELD] = token.id;
      // Ends with its answer, or with its connection (a streamed run whose client went away).
      reply.raw.once('close', () => release(req));
    }
    // A WebSocket's response object is not the connection: its socket's close is the end.
    if (LASTING.has(`${req.method} ${path}`)) {
      // Each open stream holds a connection and its work (a log follower, a sampler, a shell).
      if ((lasting.get(token.id)?.size ?? 0) >= MAX_OPEN_STREAMS) {
        throw new CellError(ErrorCodes.RATE_LIMITED, `the token "${token.name}" has ${MAX_OPEN_STREAMS} streams open, its most: close one first`);
      }
      holdOpen(token, req.raw.socket, isUpgrade(req.raw) ? req.raw.socket : reply.raw);
    }
    setHostFs(req, NO_HOST_FS);
  });
  function release(req: object): void {
    const id = (req as Record<symbol, string | undefined>)[HELD];
    if (!id) return;
    (req as Record<symbol, string | undefined>)[HELD] = undefined;
    creating.set(id, Math.max(0, (creating.get(id) ?? 1) - 1));
  }
}
