import { readRemoteInfo } from '../../engine/remote-listener.js';
import { Api } from '../../api/routes.js';
import { openApiDocument } from '../../api/openapi.js';
import type { Engine } from '../../engine/engine.js';
import { streamResult } from '../ndjson.js';
import { serve } from '../serve-route.js';
import { CELL_VERSION } from '../version.js';
import type { FastifyInstance } from 'fastify';

const { system } = Api;

export function systemRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, system.ping, async () => ({ ok: true, pid: process.pid }));

  serve(app, system.info, async () => {
    const info = await engine.info();
    return { version: CELL_VERSION, ...info, daemonPid: process.pid, remote: readRemoteInfo(info.home) };
  });

  serve(app, system.df, async () => engine.diskUsage());

  serve(app, system.setup, (req, reply) =>
    streamResult(system.setup, req, reply, async (stream) => {
      await engine.setup((e) => stream.send({ type: 'progress', ...e }), req.query.reprobe ?? false);
      return { type: 'done' as const };
    }),
  );

  // Built once: the route table does not change while celld runs.
  const document = openApiDocument(CELL_VERSION);
  serve(app, system.openapi, async () => document as { openapi: string });
}
