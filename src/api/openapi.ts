import type { TSchema } from '@sinclair/typebox';
import { ErrorBody, ErrorEvent, type RouteDef } from './contract.js';
import { allRoutes } from './routes.js';

/**
 * The OpenAPI 3.1 document of the route table. TypeBox schemas are JSON Schema (2020-12, which
 * OpenAPI 3.1 uses as is), so this only arranges them; no generator library is needed.
 */
export function openApiDocument(version: string, routes: RouteDef[] = allRoutes()): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const def of routes) {
    const path = def.path.replace(/:([A-Za-z]+)/g, '{$1}');
    (paths[path] ??= {})[def.method.toLowerCase()] = operation(def);
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'celld',
      version,
      description:
        "cellvm's daemon, on the unix socket CELL_HOME/celld.sock. Streaming answers are application/x-ndjson: one event per line, " +
        'any of which may be the `error` event, after which the stream ends.',
    },
    paths,
    components: { schemas: { ErrorBody: plain(ErrorBody), ErrorEvent: plain(ErrorEvent) } },
  };
}

function operation(def: RouteDef): Record<string, unknown> {
  const op: Record<string, unknown> = {
    operationId: operationId(def),
    summary: def.summary,
    parameters: [...parameters(def.params, 'path'), ...parameters(def.query, 'query')],
    responses: { [String('status' in def.reply ? def.reply.status : 200)]: response(def), default: errorResponse() },
  };
  if (def.body === 'octet-stream') {
    op.requestBody = { required: false, content: { 'application/octet-stream': { schema: { type: 'string', contentMediaType: 'application/octet-stream' } } } };
  } else if (def.body) {
    op.requestBody = { required: true, content: { 'application/json': { schema: plain(def.body) } } };
  }
  return op;
}

function response(def: RouteDef): Record<string, unknown> {
  const reply = def.reply;
  switch (reply.kind) {
    case 'json':
      return { description: def.summary, content: { 'application/json': { schema: plain(reply.schema) } } };
    case 'empty':
      return { description: 'done, no body' };
    case 'ndjson':
      // OpenAPI has no stream type: the schema is that of one line.
      return {
        description: `${def.summary} (one JSON event per line)`,
        content: { 'application/x-ndjson': { schema: { oneOf: [plain(reply.events), { $ref: '#/components/schemas/ErrorEvent' }] } } },
      };
    case 'websocket':
      // OpenAPI has no WebSocket type either: the upgrade, and the JSON messages of text frames.
      return {
        description: `${def.summary} (WebSocket, subprotocol ${reply.subprotocol})`,
        'x-websocket': { subprotocol: reply.subprotocol, fromClient: plain(reply.fromClient), fromServer: plain(reply.fromServer) },
      };
  }
}

function errorResponse(): Record<string, unknown> {
  return { description: 'an error with a stable code', content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorBody' } } } };
}

function parameters(schema: TSchema | undefined, where: 'path' | 'query'): Record<string, unknown>[] {
  if (!schema) return [];
  const properties = (schema.properties ?? {}) as Record<string, TSchema>;
  const required = new Set<string>((schema.required as string[] | undefined) ?? []);
  return Object.entries(properties).map(([name, property]) => ({
    name,
    in: where,
    required: where === 'path' || required.has(name),
    schema: plain(property),
  }));
}

/** `GET /v1/vms/:ref/files/stat` -> `getVmsRefFilesStat`: stable and unique per method and path. */
function operationId(def: RouteDef): string {
  const words = def.path
    .replace(/^\/v1\//, '')
    .split(/[/.:-]+/)
    .filter(Boolean);
  return def.method.toLowerCase() + words.map((w) => w[0]!.toUpperCase() + w.slice(1)).join('');
}

/** A schema as plain JSON: TypeBox keeps its own markers in symbol keys, which JSON drops anyway. */
function plain(schema: TSchema): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>;
}
