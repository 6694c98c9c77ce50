import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { FastifyBaseLogger } from 'fastify';
import { statusForCode } from '../api/contract.js';
import { CellError, ErrorCodes, toCellError } from '../domain/errors.js';
import type { Engine } from '../engine/engine.js';
import { systemRoutes } from './routes/system.js';
import { wireError } from './wire-error.js';
import { vmRoutes } from './routes/vms.js';
import { snapshotRoutes } from './routes/snapshots.js';
import { imageRoutes } from './routes/images.js';
import { fileRoutes } from './routes/files.js';
import { buildRoutes, templateRoutes } from './routes/builds.js';
import { checkCallers } from './caller-access.js';
import { checkTokens, type RemoteLimits } from './remote-access.js';
import { networkRoutes } from './routes/networks.js';
import { volumeRoutes } from './routes/volumes.js';
import { eventRoutes } from './routes/events.js';
import { tokenRoutes } from './routes/tokens.js';
import websocket from '@fastify/websocket';
import { terminalRoutes } from './routes/terminal.js';
import { uiRoutes } from './ui-assets.js';
import { isUpgrade, socketProtocol } from './socket-protocol.js';

/** The HTTP API in front of the engine. Errors become `{ error: { code, message, details } }`. */
export interface AppOptions {
  socketGroup?: number | null;
  /** The TCP listener's app: bearer tokens instead of peer credentials, no host paths (remote-access.ts). */
  remote?: { limits?: RemoteLimits; tls?: { cert: string; key: string } };
}

export function buildApp(engine: Engine, logger: FastifyBaseLogger | false = false, opts: AppOptions = {}): FastifyInstance {
  const app: FastifyInstance = Fastify({
    ...(opts.remote?.tls ? { https: { cert: opts.remote.tls.cert, key: opts.remote.tls.key } } : {}),
    // A stopping celld does not wait for remote streams (a run may last hours): they end with it.
    ...(opts.remote ? { forceCloseConnections: true } : {}),
    loggerInstance: logger || undefined,
    // Requests are not logged one by one (celld.log records what VMs did, not every poll).
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // A run or exec may last as long as the user's command does.
    requestTimeout: 0,
    connectionTimeout: 0,
    // Unknown fields are a client's typo: refuse them instead of silently dropping them.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true } },
  });

  // Stdin for a running exec arrives as a raw, possibly long, byte stream: hand it over unparsed.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  // An empty body with a JSON content type (DELETE, stop without options) means "no options".
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    const text = String(body);
    if (text.trim() === '') return done(null, {});
    try {
      done(null, JSON.parse(text));
    } catch {
      done(new CellError(ErrorCodes.INVALID_ARGUMENT, 'invalid request: the body is not valid JSON'), undefined);
    }
  });

  app.setErrorHandler((err, request, reply) => {
    // Fastify's own 4xx errors (validation, bad content type) are the client's mistake.
    const status = (err as { statusCode?: number }).statusCode;
    const clientError = (err as { validation?: unknown }).validation || (status !== undefined && status >= 400 && status < 500 && !(err instanceof CellError));
    const cell = clientError
      ? { code: ErrorCodes.INVALID_ARGUMENT, message: `invalid request: ${describeClientError(err)}`, details: undefined }
      : toCellError(err);
    if (cell.code === ErrorCodes.INTERNAL) request.log.error({ err }, 'request failed');
    reply.code(statusForCode(cell.code)).send({ error: wireError(cell) });
  });

  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send({ error: { code: ErrorCodes.NOT_FOUND, message: `no such endpoint: ${request.method} ${request.url}` } });
  });

  // An upgrade refused before it became a WebSocket (401, 403, 429, 404): Node handed its connection
  // over to us, so no server timeout would ever close it. A WebSocket that opened never gets here.
  app.addHook('onResponse', async (req) => {
    if (isUpgrade(req.raw)) req.raw.socket.destroy();
  });
  if (opts.remote) checkTokens(app, engine.tokens, opts.remote.limits);
  else checkCallers(app, opts.socketGroup ?? null);
  systemRoutes(app, engine);
  vmRoutes(app, engine);
  snapshotRoutes(app, engine);
  imageRoutes(app, engine);
  fileRoutes(app, engine);
  buildRoutes(app, engine);
  templateRoutes(app, engine);
  networkRoutes(app, engine);
  volumeRoutes(app, engine);
  eventRoutes(app, engine);
  tokenRoutes(app, engine);
  // WebSocket routes: registered in a plugin after @fastify/websocket, so its route hook sees them.
  // A text or binary message over 64 KiB is refused (a terminal's keystrokes are far smaller).
  app.register(websocket, {
    options: { maxPayload: 64 * 1024, handleProtocols: socketProtocol },
    // A client's broken frame (too big, bad UTF-8, unmasked) ends its socket; it is not celld's
    // error to log at error level (a client could fill celld.log with them).
    errorHandler: (err, socket, request) => {
      request.log.debug({ err }, 'a WebSocket ended on a protocol error');
      socket.terminate();
    },
  });
  app.register(async (scoped) => terminalRoutes(scoped, engine));
  // The dashboard is for a browser, which can only reach the TCP listener.
  if (opts.remote) uiRoutes(app);
  return app;
}

function describeClientError(err: unknown): string {
  const first = (err as { validation?: { params?: { additionalProperty?: string } }[] }).validation?.[0];
  if (first?.params?.additionalProperty) return `unknown field "${first.params.additionalProperty}"`;
  return (err as Error).message;
}
