import type { FastifyInstance } from 'fastify';
import type { Static } from '@sinclair/typebox';
import { ExportRequest, ForkRequest, ImportRequest, PruneRequest, RefParams, RemoveQuery, RestoreRequest, SnapshotRequest } from '../../api/schemas.js';
import type { Engine } from '../../engine/engine.js';

type Ref = { Params: Static<typeof RefParams> };

export function snapshotRoutes(app: FastifyInstance, engine: Engine): void {
  app.get('/v1/snapshots', async () => engine.snapshots.list());

  app.get<Ref>('/v1/snapshots/:ref', { schema: { params: RefParams } }, async (req) => engine.snapshots.resolve(req.params.ref));

  app.post<Ref & { Body: SnapshotRequest }>(
    '/v1/vms/:ref/snapshot',
    { schema: { params: RefParams, body: SnapshotRequest } },
    async (req, reply) => {
      reply.code(201);
      return engine.snapshots.take(req.params.ref, { name: req.body.name, stop: req.body.stop });
    },
  );

  app.post<Ref & { Body: ForkRequest }>('/v1/snapshots/:ref/fork', { schema: { params: RefParams, body: ForkRequest } }, async (req, reply) => {
    reply.code(201);
    return engine.snapshots.fork(req.params.ref, { count: req.body.count, namePrefix: req.body.name });
  });

  app.post<Ref & { Body: RestoreRequest }>('/v1/vms/:ref/restore', { schema: { params: RefParams, body: RestoreRequest } }, async (req) =>
    engine.snapshots.restore(req.params.ref, req.body.snapshot),
  );

  app.post<Ref & { Body: ExportRequest }>('/v1/snapshots/:ref/export', { schema: { params: RefParams, body: ExportRequest } }, async (req) =>
    engine.snapshots.export(req.params.ref, req.body.file),
  );

  app.post<{ Body: ImportRequest }>('/v1/snapshots/import', { schema: { body: ImportRequest } }, async (req, reply) => {
    reply.code(201);
    return engine.snapshots.import(req.body.file, req.body.name);
  });

  app.post<{ Body: PruneRequest }>('/v1/snapshots/prune', { schema: { body: PruneRequest } }, async (req) => ({
    removed: await engine.snapshots.prune({ maxCount: req.body.maxCount, maxBytes: req.body.maxBytes }),
  }));

  app.delete<Ref & { Querystring: Static<typeof RemoveQuery> }>(
    '/v1/snapshots/:ref',
    { schema: { params: RefParams, querystring: RemoveQuery } },
    async (req, reply) => {
      await engine.snapshots.remove(req.params.ref, req.query.force ?? false);
      reply.code(204);
    },
  );
}
