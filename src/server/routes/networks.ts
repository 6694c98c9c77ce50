import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { serve } from '../serve-route.js';

const { networks } = Api;

/** Named networks: create, list, inspect, remove, prune, connect and disconnect VMs. */
export function networkRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, networks.list, async () => engine.networks.list());
  serve(app, networks.get, async (req) => engine.networks.get(req.params.name));
  serve(app, networks.create, async (req) => engine.networks.create(req.body.name, { subnet: req.body.subnet, internal: req.body.internal }));
  serve(app, networks.remove, async (req) => {
    await engine.networks.remove(req.params.name);
  });
  serve(app, networks.prune, async () => ({ removed: await engine.networks.prune() }));
  serve(app, networks.connect, async (req) => engine.networks.connect(req.params.name, req.body.vm));
  serve(app, networks.disconnect, async (req) => engine.networks.disconnect(req.params.name, req.body.vm));
}
