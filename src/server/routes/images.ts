import type { FastifyInstance } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { RefParams, RemoveQuery } from '../../api/schemas.js';
import type { Engine } from '../../engine/engine.js';
import { openNdjson } from '../ndjson.js';

const Insecure = Type.Optional(Type.Array(Type.String({ minLength: 1 })));
const PullBody = Type.Object(
  { reference: Type.String({ minLength: 1 }), platform: Type.Optional(Type.String()), insecureRegistries: Insecure },
  { additionalProperties: false },
);
const ImportBody = Type.Object(
  { file: Type.String({ minLength: 1 }), reference: Type.Optional(Type.String()) },
  { additionalProperties: false },
);

const PushBody = Type.Object(
  { reference: Type.String({ minLength: 1 }), target: Type.Optional(Type.String({ minLength: 1 })), insecureRegistries: Insecure },
  { additionalProperties: false },
);
const ExportBody = Type.Object({ reference: Type.String({ minLength: 1 }), file: Type.String({ minLength: 1 }) }, { additionalProperties: false });
const PruneBody = Type.Object({ maxBytes: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false });
const LoginBody = Type.Object(
  { registry: Type.String({ minLength: 1 }), username: Type.String({ minLength: 1 }), password: Type.String(), insecureRegistries: Insecure },
  { additionalProperties: false },
);
const LogoutBody = Type.Object({ registry: Type.String({ minLength: 1 }) }, { additionalProperties: false });

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
        insecureRegistries: req.body.insecureRegistries,
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

  app.post<{ Body: Static<typeof PushBody> }>('/v1/images/push', { schema: { body: PushBody } }, async (req) =>
    engine.images.push(req.body.reference, req.body.target ?? req.body.reference, req.body.insecureRegistries),
  );

  app.post<{ Body: Static<typeof ExportBody> }>('/v1/images/export', { schema: { body: ExportBody } }, async (req) =>
    engine.images.export(req.body.reference, req.body.file),
  );

  app.post<{ Body: Static<typeof PruneBody> }>('/v1/images/prune', { schema: { body: PruneBody } }, async (req) =>
    engine.images.prune({ maxBytes: req.body.maxBytes }),
  );

  app.post<{ Body: Static<typeof LoginBody> }>('/v1/registries/login', { schema: { body: LoginBody } }, async (req) => {
    await engine.images.login(req.body.registry, req.body.username, req.body.password, req.body.insecureRegistries);
    return { ok: true };
  });

  app.post<{ Body: Static<typeof LogoutBody> }>('/v1/registries/logout', { schema: { body: LogoutBody } }, async (req) => ({
    removed: await engine.images.logout(req.body.registry),
  }));

  app.delete<{ Params: Static<typeof RefParams>; Querystring: Static<typeof RemoveQuery> }>(
    '/v1/images/:ref',
    { schema: { params: RefParams, querystring: RemoveQuery } },
    async (req, reply) => {
      await engine.images.remove(req.params.ref, req.query.force ?? false);
      reply.code(204);
    },
  );
}
