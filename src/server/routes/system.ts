import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import type { Engine } from '../../engine/engine.js';
import { openNdjson } from '../ndjson.js';
import { CELL_VERSION } from '../version.js';

const SetupQuery = Type.Object({ reprobe: Type.Optional(Type.Boolean()) });

export function systemRoutes(app: FastifyInstance, engine: Engine): void {
  app.get('/v1/ping', async () => ({ ok: true, pid: process.pid }));

  app.get('/v1/info', async () => ({ version: CELL_VERSION, ...(await engine.info()), daemonPid: process.pid }));

  app.post<{ Querystring: Static<typeof SetupQuery> }>('/v1/setup', { schema: { querystring: SetupQuery } }, async (req, reply) => {
    const stream = openNdjson(req, reply);
    try {
      await engine.setup((e) => stream.send({ type: 'progress', ...e }), req.query.reprobe ?? false);
      stream.send({ type: 'done' });
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });
}
