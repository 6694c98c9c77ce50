import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { RefParams, RemoveQuery } from '../../api/schemas.js';
import type { Engine } from '../../engine/engine.js';
import { openNdjson } from '../ndjson.js';

const PullBody = Type.Object(
  { reference: Type.String({ minLength: 1 }), platform: Type.Optional(Type.String()) },
  { additionalProperties: false },
);
const ImportBody = Type.Object(
  { file: Type.String({ minLength: 1 }), reference: Type.Optional(Type.String()) },
  { additionalProperties: false },
);

export function imageRoutes(app: FastifyInstance, engine: Engine): void {
  app.get('/v1/images', async () =>
    engine.images.list().map(({ reference, digest, sizeBytes, builtin, createdAt, lastUsed }) => ({
      reference,
      digest,
      sizeBytes,
      builtin,
      createdAt,
      lastUsed,
    })),
  );

  // Pull progress streams as `pull` events, then `done` with the image.
  app.post<{ Body: Static<typeof PullBody> }>('/v1/images/pull', { schema: { body: PullBody } }, async (req, reply) => {
    const stream = openNdjson(req, reply);
    try {
      const image = await engine.images.pull({
        reference: req.body.reference,
        platform: req.body.platform,
        signal: stream.signal,
        onProgress: (event) => stream.send({ type: 'pull', event }),
      });
      stream.send({ type: 'image', image: { reference: image.reference, digest: image.digest, sizeBytes: image.sizeBytes } });
      stream.send({ type: 'done' });
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  app.post<{ Body: Static<typeof ImportBody> }>('/v1/images/import', { schema: { body: ImportBody } }, async (req, reply) => {
    const image = await engine.images.importArchive(req.body.file, req.body.reference);
    reply.code(201);
    return { reference: image.reference, digest: image.digest, sizeBytes: image.sizeBytes };
  });

  app.delete<{ Params: Static<typeof RefParams>; Querystring: Static<typeof RemoveQuery> }>(
    '/v1/images/:ref',
    { schema: { params: RefParams, querystring: RemoveQuery } },
    async (req, reply) => {
      await engine.images.remove(req.params.ref, req.query.force ?? false);
      reply.code(204);
    },
  );
}
