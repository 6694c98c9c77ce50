import { Type, type Static, type TSchema } from '@sinclair/typebox';

/**
 * The shape of one route of celld's HTTP API. Every route is declared once, in the resource files
 * next to this one (vms.ts, images.ts, ...); the server registers exactly those routes and the SDK
 * calls through them, so a renamed path, parameter or field fails to type-check on both sides.
 */

export type HttpMethod = 'GET' | 'POST' | 'DELETE';

/** A JSON answer; `schema` documents it (OpenAPI) and types it (server handler, SDK call). */
export interface JsonReply<S extends TSchema = TSchema> {
  kind: 'json';
  status: 200 | 201;
  schema: S;
}

/** An answer without a body. */
export interface EmptyReply {
  kind: 'empty';
  status: 204;
}

/**
 * An `application/x-ndjson` stream: one event per line, each one of `events` (a union of this
 * route's own event kinds) or the `error` event every stream may end with.
 */
export interface StreamReply<S extends TSchema = TSchema> {
  kind: 'ndjson';
  events: S;
}

/**
 * A WebSocket (`GET` with `Upgrade: websocket`, answered 101) speaking `subprotocol`: binary
 * frames carry raw bytes both ways; text frames are one JSON message each, `fromClient` or
 * `fromServer`. Browsers cannot set headers on a WebSocket: over TCP the bearer token comes as a
 * second subprotocol, `bearer.TOKEN` (never echoed back).
 */
export interface SocketReply<C extends TSchema = TSchema, S extends TSchema = TSchema> {
  kind: 'websocket';
  status: 101;
  subprotocol: string;
  fromClient: C;
  fromServer: S;
}

export type Reply = JsonReply | EmptyReply | StreamReply | SocketReply;

export interface RouteDef {
  method: HttpMethod;
  /** Fastify's syntax: `:name` is a path parameter. */
  path: string;
  /** One line for people (OpenAPI summary). */
  summary: string;
  params?: TSchema;
  query?: TSchema;
  /** A JSON body, or `'octet-stream'` for raw bytes handed to the handler unparsed. */
  body?: TSchema | 'octet-stream';
  reply: Reply;
}

/** The `:name` parameters of a path, as a union of names. */
export type PathParamNames<P extends string> = P extends `${string}:${infer Name}/${infer Rest}`
  ? Name | PathParamNames<`/${Rest}`>
  : P extends `${string}:${infer Name}`
    ? Name
    : never;

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;

/** Declared params must name exactly the path's `:params` (a mismatch is a type error at the route). */
type ParamsMatchPath<R extends RouteDef> = R extends { params: infer S extends TSchema }
  ? Same<keyof Static<S> & string, PathParamNames<R['path']>> extends true
    ? unknown
    : { params: `must declare exactly the parameters of ${R['path']}` }
  : [PathParamNames<R['path']>] extends [never]
    ? unknown
    : { params: `${R['path']} has path parameters: declare them` };

/** Declares a route, keeping its literal types (used by ParamsOf, ReplyOf, EventOf, ...). */
export function route<const R extends RouteDef>(def: R & ParamsMatchPath<R>): R {
  return def;
}

export const json = <S extends TSchema>(schema: S, status: 200 | 201 = 200): JsonReply<S> => ({ kind: 'json', status, schema });
export const created = <S extends TSchema>(schema: S): JsonReply<S> => json(schema, 201);
export const empty = (): EmptyReply => ({ kind: 'empty', status: 204 });
export const ndjson = <S extends TSchema>(events: S): StreamReply<S> => ({ kind: 'ndjson', events });
export const websocket = <C extends TSchema, S extends TSchema>(subprotocol: string, fromClient: C, fromServer: S): SocketReply<C, S> => ({
  kind: 'websocket',
  status: 101,
  subprotocol,
  fromClient,
  fromServer,
});

export type ParamsOf<R extends RouteDef> = R extends { params: infer S extends TSchema } ? Static<S> : Record<never, never>;
export type QueryOf<R extends RouteDef> = R extends { query: infer S extends TSchema } ? Static<S> : Record<never, never>;
/** A JSON body's type; raw bodies (`'octet-stream'`) reach the server as a stream, so `unknown` there. */
export type BodyOf<R extends RouteDef> = R extends { body: infer S extends TSchema } ? Static<S> : R extends { body: 'octet-stream' } ? unknown : undefined;
export type ReplyOf<R extends RouteDef> = R['reply'] extends JsonReply<infer S> ? Static<S> : R['reply'] extends EmptyReply ? void : never;
/** The events a stream route sends (without the `error` event, which every stream may send). */
export type EventOf<R extends RouteDef> = R['reply'] extends StreamReply<infer S> ? Static<S> : never;

export type JsonRoute = RouteDef & { reply: JsonReply | EmptyReply };
export type StreamRoute = RouteDef & { reply: StreamReply };
export type SocketRoute = RouteDef & { reply: SocketReply };
/** The JSON messages each side of a WebSocket route sends in text frames. */
export type ClientMessageOf<R extends SocketRoute> = Static<R['reply']['fromClient']>;
export type ServerMessageOf<R extends SocketRoute> = Static<R['reply']['fromServer']>;

/** The subprotocol that carries a bearer token on a WebSocket (SocketReply). */
export const BEARER_SUBPROTOCOL_PREFIX = 'bearer.';

/** A route's concrete path: each `:name` replaced by its encoded value. */
export function pathFor(def: RouteDef, params: Record<string, string> = {}): string {
  return def.path.replace(/:([A-Za-z]+)/g, (_m, name: string) => {
    const value = params[name];
    if (value === undefined) throw new Error(`${def.method} ${def.path}: missing path parameter ${name}`);
    return encodeURIComponent(value);
  });
}

/** A query string of the set values (`?path=%2Fetc&maxBytes=10`); false and undefined are left out. */
export function queryString(values: object = {}): string {
  // An array is the key repeated (`filter=a&filter=b`), as the server's parser reads it.
  const set = Object.entries(values)
    .filter(([, v]) => v !== undefined && v !== false)
    .flatMap(([k, v]): [string, string][] => (Array.isArray(v) ? v.map((item): [string, string] => [k, String(item)]) : [[k, String(v)]]));
  return set.length ? `?${new URLSearchParams(set).toString()}` : '';
}

/** Errors: HTTP status plus this body. A failure inside a stream is the `error` event instead. */
export const ErrorBody = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String(),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  }),
});
export type ErrorBody = Static<typeof ErrorBody>;

/** The last line of a stream that failed after it started. */
export const ErrorEvent = Type.Object({ type: Type.Literal('error'), error: ErrorBody.properties.error });
export type ErrorEvent = Static<typeof ErrorEvent>;

/** HTTP status for each error code. */
export function statusForCode(code: string): number {
  switch (code) {
    case 'invalid_argument':
    case 'bad_build_file':
      return 400;
    case 'not_found':
    case 'image_not_found':
      return 404;
    case 'ambiguous_ref':
    case 'conflict':
    case 'vm_not_running':
    case 'vm_paused':
    case 'incompatible_snapshot':
    case 'invalid_state':
      return 409;
    case 'permission_denied':
      return 403;
    case 'unauthenticated':
      return 401;
    case 'rate_limited':
      return 429;
    case 'host_missing_dependency':
      return 424;
    case 'resources_exhausted':
      return 507;
    case 'daemon_unavailable':
      return 503;
    default:
      return 500;
  }
}
