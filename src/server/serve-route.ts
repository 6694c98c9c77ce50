import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type {} from '@fastify/websocket';
import type { WebSocket } from 'ws';
import type { BodyOf, JsonRoute, ParamsOf, QueryOf, ReplyOf, RouteDef, SocketRoute, StreamRoute } from '../api/contract.js';
import { ErrorCodes } from '../domain/errors.js';

export type RequestFor<R extends RouteDef> = FastifyRequest<{ Params: ParamsOf<R>; Querystring: QueryOf<R>; Body: BodyOf<R> }>;

/** A JSON route's handler: resolves with the reply the contract declares (undefined for 204). */
export type JsonHandler<R extends JsonRoute> = (req: RequestFor<R>, reply: FastifyReply) => Promise<ReplyOf<R>>;
/** A stream route's handler: takes the response over (openStream) and writes its events. */
export type StreamHandler<R extends StreamRoute> = (req: RequestFor<R>, reply: FastifyReply) => Promise<void>;

/**
 * Registers one route of the contract: its method and path, its params, query and JSON body as
 * fastify's validation schemas, its success status. Replies are not given to fastify as response
 * schemas: fastify would then drop fields the schema does not list, and the wire must not change.
 */
export function serve<R extends JsonRoute>(app: FastifyInstance, def: R, handler: JsonHandler<R>): void;
export function serve<R extends StreamRoute>(app: FastifyInstance, def: R, handler: StreamHandler<R>): void;
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the overloads above carry the types
export function serve(app: FastifyInstance, def: RouteDef, handler: (req: FastifyRequest<any>, reply: FastifyReply) => Promise<unknown>): void {
  const schema = validationSchema(def);
  const status = def.reply.kind === 'ndjson' ? undefined : def.reply.status;
  app.route({
    method: def.method,
    url: def.path,
    schema,
    handler: async (req, reply) => {
      if (status !== undefined) reply.code(status);
      return handler(req, reply);
    },
  });
}

/** A WebSocket route's handler: owns the socket from the upgrade on (errors go to the client as messages). */
export type SocketHandler<R extends SocketRoute> = (socket: WebSocket, req: RequestFor<R>) => void;

/**
 * Registers a WebSocket route of the contract (@fastify/websocket, which the app registers first;
 * call inside a plugin registered after it). Hooks (peer credentials, tokens, scopes) and the
 * params and query schemas apply to the upgrade request as to any other; a plain GET is told to
 * upgrade.
 */
export function serveSocket<R extends SocketRoute>(app: FastifyInstance, def: R, handler: SocketHandler<R>): void {
  app.route({
    method: 'GET',
    url: def.path,
    schema: validationSchema(def),
    handler: async (_req, reply) => {
      const code = ErrorCodes.INVALID_ARGUMENT;
      reply.code(426).header('upgrade', 'websocket');
      return { error: { code, message: `${def.path} is a WebSocket (subprotocol ${def.reply.subprotocol}): connect with Upgrade: websocket` } };
    },
    wsHandler: (socket, req) => handler(socket, req as RequestFor<R>),
  });
}

/** A route's params, query and JSON body as fastify's validation schemas. */
function validationSchema(def: RouteDef): FastifySchema {
  const schema: FastifySchema = {};
  if (def.params) schema.params = def.params;
  if (def.query) schema.querystring = def.query;
  if (def.body && def.body !== 'octet-stream') schema.body = def.body;
  return schema;
}
