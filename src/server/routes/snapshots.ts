import { parseLabels } from '../../domain/labels.js';
import { hostFsOf } from '../caller-access.js';
import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { serve } from '../serve-route.js';
import { streamResult } from '../ndjson.js';

const { snapshots } = Api;

export function snapshotRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, snapshots.list, async () => engine.snapshots.listWithPools());

  serve(app, snapshots.get, async (req) => engine.snapshots.inspect(req.params.ref));

  serve(app, snapshots.pool, async (req) => engine.snapshots.setPool(req.params.ref, { size: req.body.size, warm: req.body.warm ?? false }));

  serve(app, snapshots.take, async (req) => engine.snapshots.take(req.params.ref, { name: req.body.name, stop: req.body.stop, labels: parseLabels(req.body.labels) }));

  serve(app, snapshots.fork, async (req) => engine.snapshots.fork(req.params.ref, { count: req.body.count, namePrefix: req.body.name, labels: parseLabels(req.body.labels) }));

  serve(app, snapshots.restore, async (req) => engine.snapshots.restore(req.params.ref, req.body.snapshot));

  serve(app, snapshots.export, async (req) => engine.snapshots.export(req.params.ref, req.body.file, hostFsOf(req)));

  serve(app, snapshots.import, async (req) => engine.snapshots.import(req.body.file, req.body.name, hostFsOf(req)));

  // Push and pull stream `progress` events (bytes of blobs dealt with, of all), then their result and `done`.
  serve(app, snapshots.push, (req, reply) =>
    streamResult(snapshots.push, req, reply, async (stream) => {
      const result = await engine.snapshots.push(req.params.ref, req.body.reference, {
        insecureRegistries: req.body.insecureRegistries,
        onProgress: (done, total) => stream.send({ type: 'progress', done, total }),
      });
      stream.send({ type: 'pushed', result });
      return { type: 'done' as const };
    }),
  );

  serve(app, snapshots.pull, (req, reply) =>
    streamResult(snapshots.pull, req, reply, async (stream) => {
      const snapshot = await engine.snapshots.pull(req.body.reference, {
        name: req.body.name,
        insecureRegistries: req.body.insecureRegistries,
        onProgress: (done, total) => stream.send({ type: 'progress', done, total }),
        onTransfer: (summary) => stream.send({ type: 'transferred', ...summary }),
      });
      stream.send({ type: 'snapshot', snapshot });
      return { type: 'done' as const };
    }),
  );

  serve(app, snapshots.prune, async (req) => ({
    removed: await engine.snapshots.prune({ maxCount: req.body.maxCount, maxBytes: req.body.maxBytes }),
  }));

  serve(app, snapshots.remove, async (req) => {
    await engine.snapshots.remove(req.params.ref, req.query.force ?? false);
  });
}
