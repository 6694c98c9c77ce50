import { hostFsOf } from '../caller-access.js';
import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { ActionRequest } from '../../api/builds.js';
import type { ActionSpec } from '../../domain/action.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { Engine } from '../../engine/engine.js';
import { outputEvents, streamResult } from '../ndjson.js';
import { serve } from '../serve-route.js';

const { actions, builds, cache, templates } = Api;

/** Actions, builds and the action cache. */
export function buildRoutes(app: FastifyInstance, engine: Engine): void {
  // Stream: `action` (cache verdict), stdout/stderr of the command, `result`.
  serve(app, actions.run, async (req, reply) => {
    const spec = actionSpec(req.body);
    await streamResult(actions.run, req, reply, async (stream) => {
      const result = await engine.actions.run(spec, req.body.cache ? { mode: 'cache', salt: req.body.salt } : { mode: 'none' }, {
        snapshot: req.body.keepSnapshot,
        sink: outputEvents(stream),
        signal: stream.signal,
        onPlan: (plan) => stream.send({ type: 'action', ...plan }),
        host: hostFsOf(req),
      });
      return { type: 'result' as const, result };
    });
  });

  // Stream: `base`, then per step `step`, the step's output, `step-done` (or `step-failed`); `built`.
  serve(app, builds.build, async (req, reply) => {
    // A bad build file is a plain HTTP error, before the stream opens.
    const plan = await engine.builds.load(req.body.file, req.body.target, hostFsOf(req));
    await streamResult(builds.build, req, reply, async (stream) => {
      const result = await engine.builds.build(plan, {
        tag: req.body.tag,
        noCache: req.body.noCache,
        sink: outputEvents(stream),
        signal: stream.signal,
        onEvent: (event) => stream.send(event),
        host: hostFsOf(req),
      });
      return { type: 'built' as const, result };
    });
  });

  serve(app, cache.list, async () =>
    engine.actions.listCache().map(({ entry, snapshot }) => ({
      ...entry,
      snapshotName: snapshot?.name ?? null,
      bytes: snapshot ? snapshot.stateBytes + snapshot.memoryBytes + snapshot.diskBytes : 0,
    })),
  );

  serve(app, cache.prune, async (req) => {
    const { maxCount, maxBytes, maxAgeSec } = req.body;
    if (maxCount === undefined && maxBytes === undefined && maxAgeSec === undefined) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'say what to keep: maxCount, maxBytes or maxAgeSec');
    }
    const removed = await engine.actions.pruneCache({ maxCount, maxBytes, maxAgeMs: maxAgeSec === undefined ? undefined : maxAgeSec * 1000 });
    return { removed };
  });
}

function actionSpec(body: ActionRequest): ActionSpec {
  if ((body.image === undefined) === (body.fromSnapshot === undefined)) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'an action needs exactly one source: image or fromSnapshot');
  }
  return {
    source: body.image !== undefined ? { image: body.image } : { snapshot: body.fromSnapshot! },
    cmd: body.cmd,
    env: body.env,
    workingDir: body.workingDir,
    user: body.user,
    timeoutSec: body.timeoutSec,
    cpus: body.cpus,
    memoryMib: body.memoryMib,
    inject: body.inject,
    detach: body.detach,
    ready: body.ready,
  };
}

/** Templates: build (stream), list, inspect, remove. */
export function templateRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, templates.build, async (req, reply) => {
    const file = await engine.templates.load(req.body.file, hostFsOf(req));
    await streamResult(templates.build, req, reply, async (stream) => {
      const result = await engine.templates.build(file, {
        snapshot: req.body.snapshot,
        sink: outputEvents(stream),
        signal: stream.signal,
        onEvent: (event) => stream.send(event),
        host: hostFsOf(req),
      });
      return { type: 'templates' as const, result };
    });
  });

  serve(app, templates.list, async () =>
    engine.templates.list().map(({ template, revision }) => ({ ...template, revision: revision ?? null })),
  );

  serve(app, templates.get, async (req) => {
    const { template, revision } = engine.templates.resolve(req.params.ref);
    return { ...template, revision, revisions: engine.templates.revisions(template.name) };
  });

  // Push and pull stream `progress` (bytes of both snapshots' blobs dealt with, of all so far), then their result and `done`.
  serve(app, templates.push, (req, reply) =>
    streamResult(templates.push, req, reply, async (stream) => {
      const result = await engine.templates.push(req.params.ref, req.body.reference, {
        insecureRegistries: req.body.insecureRegistries,
        onProgress: (done, total) => stream.send({ type: 'progress', done, total }),
      });
      stream.send({ type: 'pushed', result });
      return { type: 'done' as const };
    }),
  );

  serve(app, templates.pull, (req, reply) =>
    streamResult(templates.pull, req, reply, async (stream) => {
      const { template, revision } = await engine.templates.pull(req.body.reference, {
        insecureRegistries: req.body.insecureRegistries,
        onProgress: (done, total) => stream.send({ type: 'progress', done, total }),
      });
      stream.send({ type: 'template', template: { ...template, revision } });
      return { type: 'done' as const };
    }),
  );

  serve(app, templates.remove, async (req) => ({ removed: await engine.templates.remove(req.params.ref, req.query.force ?? false) }));
}
