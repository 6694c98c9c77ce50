import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { allRoutes } from '../../src/api/routes.js';
import { openApiDocument } from '../../src/api/openapi.js';
import { buildApp } from '../../src/server/app.js';
import { CELL_VERSION } from '../../src/server/version.js';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import type { Engine } from '../../src/engine/engine.js';

// The route table, the OpenAPI document made from it, and the fastify app registered from it.
// The app is built around a test double of the engine: nothing boots; the real engine is covered
// by the end-to-end tests.

/** An engine whose given members answer; any other one fails the test that touches it. */
function engineDouble(members: Record<string, unknown> = {}): Engine {
  return new Proxy(members, {
    get(target, name) {
      if (typeof name === 'string' && name in target) return target[name];
      throw new Error(`the test touched engine.${String(name)}`);
    },
  }) as unknown as Engine;
}

const routes = allRoutes();

test('the route table: one entry per method and path, /v1 paths, stream routes with their own events', () => {
  const keys = routes.map((r) => `${r.method} ${r.path}`);
  assert.equal(new Set(keys).size, keys.length, 'no method and path twice');
  assert.equal(routes.length, 80, '79 routes of the API plus GET /v1/openapi.json');
  for (const r of routes) {
    assert.match(r.path, /^\/v1\//);
    assert.ok(r.summary.length > 0, `${r.method} ${r.path} says what it does`);
    if (r.reply.kind === 'ndjson') assert.ok(r.reply.events.anyOf ?? r.reply.events.properties, `${r.path}: an event schema`);
    if (r.reply.kind === 'websocket') assert.equal(r.method, 'GET', 'a WebSocket starts with a GET');
  }
});

test('the OpenAPI document lists every route with its parameters, body and answer', () => {
  const doc = openApiDocument('1.2.3') as { openapi: string; info: { version: string }; paths: Record<string, Record<string, Record<string, unknown>>> };
  assert.equal(doc.openapi, '3.1.0');
  assert.equal(doc.info.version, '1.2.3');
  const ids = new Set<string>();
  for (const r of routes) {
    const op = doc.paths[r.path.replace(/:([A-Za-z]+)/g, '{$1}')]?.[r.method.toLowerCase()] as
      | { operationId: string; parameters: { name: string; in: string }[]; responses: Record<string, { content?: Record<string, unknown> }>; requestBody?: { content: Record<string, unknown> } }
      | undefined;
    assert.ok(op, `${r.method} ${r.path} is in the document`);
    ids.add(op.operationId);
    const pathParams = [...r.path.matchAll(/:([A-Za-z]+)/g)].map((m) => m[1]);
    assert.deepEqual(op.parameters.filter((p) => p.in === 'path').map((p) => p.name), pathParams);
    const status = r.reply.kind === 'ndjson' ? '200' : String(r.reply.status);
    assert.ok(op.responses[status], `${r.method} ${r.path} answers ${status}`);
    assert.ok(op.responses.default, 'errors are documented');
    if (r.reply.kind === 'ndjson') assert.ok(op.responses[status]!.content?.['application/x-ndjson']);
    if (r.body === 'octet-stream') assert.ok(op.requestBody?.content['application/octet-stream']);
    else if (r.body) assert.ok(op.requestBody?.content['application/json']);
  }
  assert.equal(ids.size, routes.length, 'operation ids are unique');
  const run = doc.paths['/v1/vms/run']!.post as { responses: { 200: { content: { 'application/x-ndjson': { schema: { oneOf: { anyOf: { properties: { type: { const: string } } }[] }[] } } } } } };
  const kinds = run.responses[200].content['application/x-ndjson'].schema.oneOf[0]!.anyOf.map((e) => e.properties.type.const);
  assert.deepEqual(kinds, ['created', 'running', 'exec', 'progress', 'pull', 'stdout', 'stderr', 'exit', 'done'], "a run's own events, no others");
});

test('the server registers every route of the table, and no route of its own', async () => {
  const app = buildApp(engineDouble());
  await app.ready();
  for (const r of routes) assert.ok(app.hasRoute({ method: r.method, url: r.path }), `${r.method} ${r.path} is registered`);
  // Every registration goes through serve() with a contract entry: no literal route in the server
  // (the dashboard's files, ui-assets.ts, are not part of the API).
  const dir = join(import.meta.dirname, '../../src/server');
  const files = [...readdirSync(dir).map((f) => join(dir, f)), ...readdirSync(join(dir, 'routes')).map((f) => join(dir, 'routes', f))].filter((f) => f.endsWith('.ts'));
  for (const file of files) {
    const source = readFileSync(file, 'utf8');
    if (!file.endsWith('serve-route.ts') && !file.endsWith('ui-assets.ts')) assert.doesNotMatch(source, /app\.(get|post|put|delete|patch|route)\s*[(<]/, `${file} registers a route outside the contract`);
    if (!file.endsWith('app.ts')) assert.doesNotMatch(source, /'\/v1\//, `${file} spells out a /v1 path`);
  }
  await app.close();
});

test('GET /v1/openapi.json serves the document of the route table', async () => {
  const app = buildApp(engineDouble());
  const res = await app.inject({ method: 'GET', url: '/v1/openapi.json' });
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /application\/json/);
  assert.deepEqual(res.json(), openApiDocument(CELL_VERSION));
  await app.close();
});

test('error replies keep their shape and codes', async () => {
  const app = buildApp(
    engineDouble({
      vms: {
        resolve: (ref: string) => {
          throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${ref}`);
        },
        inspect: async (ref: string) => {
          throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${ref}`);
        },
      },
    }),
  );
  const unknown = await app.inject({ method: 'GET', url: '/v1/nope' });
  assert.equal(unknown.statusCode, 404);
  assert.deepEqual(unknown.json(), { error: { code: 'not_found', message: 'no such endpoint: GET /v1/nope' } });

  const typo = await app.inject({ method: 'POST', url: '/v1/vms', payload: { image: 'busybox', imgae: 'x' } });
  assert.equal(typo.statusCode, 400);
  assert.deepEqual(typo.json(), { error: { code: 'invalid_argument', message: 'invalid request: unknown field "imgae"' } });

  const missing = await app.inject({ method: 'GET', url: '/v1/vms/ghost' });
  assert.equal(missing.statusCode, 404);
  assert.deepEqual(missing.json(), { error: { code: 'not_found', message: 'no such VM: ghost' } });

  // A stream route checks the VM before its stream opens: a plain HTTP error too.
  const logs = await app.inject({ method: 'GET', url: '/v1/vms/ghost/logs' });
  assert.equal(logs.statusCode, 404);
  assert.equal(logs.json().error.code, 'not_found');
  await app.close();
});

test('success statuses come from the contract: 201 for a created thing, 204 for a removal', async () => {
  const removed: string[] = [];
  const app = buildApp(
    engineDouble({
      snapshots: { import: async (file: string, name?: string) => ({ id: 'abc', name: name ?? file }), remove: async (ref: string) => void removed.push(ref) },
    }),
  );
  const imported = await app.inject({ method: 'POST', url: '/v1/snapshots/import', payload: { file: '/tmp/s.tar', name: 'warm' } });
  assert.equal(imported.statusCode, 201);
  assert.deepEqual(imported.json(), { id: 'abc', name: 'warm' });
  const gone = await app.inject({ method: 'DELETE', url: '/v1/snapshots/warm?force=true' });
  assert.equal(gone.statusCode, 204);
  assert.equal(gone.body, '');
  assert.deepEqual(removed, ['warm']);
  await app.close();
});
