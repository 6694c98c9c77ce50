import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { serve } from '../serve-route.js';

const { tokens } = Api;

/** API tokens: create (the secret answered once), list, revoke. */
export function tokenRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, tokens.list, async () => engine.tokens.list());
  serve(app, tokens.create, async (req) => engine.tokens.create(req.body));
  serve(app, tokens.remove, async (req) => {
    engine.tokens.remove(req.params.ref);
  });
}
