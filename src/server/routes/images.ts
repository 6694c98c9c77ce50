import { hostFsOf } from '../caller-access.js';
import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { streamResult } from '../ndjson.js';
import { serve } from '../serve-route.js';

const { images, registries } = Api;

export function imageRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, images.list, async () =>
    engine.images.list().map(({ reference, digest, sizeBytes, builtin, createdAt, lastUsed }) => ({
      reference,
      digest,
      sizeBytes,
      builtin,
      createdAt,
      lastUsed,
    })),
  );

  // Pull progress streams as `pull` events, then `image` and `done`.
  serve(app, images.pull, (req, reply) =>
    streamResult(images.pull, req, reply, async (stream) => {
      const image = await engine.images.pull({
        reference: req.body.reference,
        platform: req.body.platform,
        insecureRegistries: req.body.insecureRegistries,
        signal: stream.signal,
        onProgress: (event) => stream.send({ type: 'pull', event }),
      });
      stream.send({ type: 'image', image: { reference: image.reference, digest: image.digest, sizeBytes: image.sizeBytes } });
      return { type: 'done' as const };
    }),
  );

  serve(app, images.import, async (req) => {
    const image = await engine.images.importArchive(req.body.file, req.body.reference, hostFsOf(req));
    return { reference: image.reference, digest: image.digest, sizeBytes: image.sizeBytes };
  });

  serve(app, images.push, async (req) => engine.images.push(req.body.reference, req.body.target ?? req.body.reference, req.body.insecureRegistries));

  serve(app, images.export, async (req) => engine.images.export(req.body.reference, req.body.file, hostFsOf(req)));

  serve(app, images.prune, async (req) => engine.images.prune({ maxBytes: req.body.maxBytes }));

  serve(app, registries.login, async (req) => {
    await engine.images.login(req.body.registry, req.body.username, req.body.password, req.body.insecureRegistries);
    return { ok: true };
  });

  serve(app, registries.logout, async (req) => ({ removed: await engine.images.logout(req.body.registry) }));

  serve(app, images.remove, async (req) => {
    await engine.images.remove(req.params.ref, req.query.force ?? false);
  });
}
