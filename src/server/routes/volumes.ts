import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { serve } from '../serve-route.js';
import { hostFsOf } from '../caller-access.js';

const { volumes } = Api;

/** Named volumes: create, list, inspect, remove, prune. */
export function volumeRoutes(app: FastifyInstance, engine: Engine): void {
  // Looked up per request: registering the routes touches no engine part.
  const service = () => engine.vms.volumes;
  serve(app, volumes.list, async () => service().list());
  serve(app, volumes.get, async (req) => service().inspect(req.params.name));
  serve(app, volumes.create, async (req) => {
    const made = await service().create(req.body.name, { sizeBytes: req.body.sizeBytes, labels: req.body.labels });
    return service().inspect(made.name);
  });
  serve(app, volumes.remove, async (req) => {
    await service().remove(req.params.name, req.query.force ?? false);
  });
  serve(app, volumes.export, async (req) => service().export(req.params.name, req.body.file, hostFsOf(req)));
  serve(app, volumes.import, async (req) => {
    const made = await service().import(req.body.file, req.body.name, hostFsOf(req));
    return service().inspect(made.name);
  });
  serve(app, volumes.prune, async () => ({ removed: (await service().prune()).map((v) => v.name) }));
}
