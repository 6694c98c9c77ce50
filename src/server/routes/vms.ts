import { PassThrough } from 'node:stream';
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { Static } from '@sinclair/typebox';
import {
  ExecRequest,
  ListQuery,
  LogsQuery,
  RefParams,
  RemoveQuery,
  RunRequest,
  StopRequest,
} from '../../api/schemas.js';
import type { Engine } from '../../engine/engine.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { openNdjson, outputEvents } from '../ndjson.js';

type Ref = { Params: Static<typeof RefParams> };

export function vmRoutes(app: FastifyInstance, engine: Engine): void {
  /** Stdin pipes of running execs that asked for one, by exec id. */
  const stdinPipes = new Map<string, PassThrough>();

  app.get<{ Querystring: Static<typeof ListQuery> }>('/v1/vms', { schema: { querystring: ListQuery } }, async (req) =>
    engine.vms.list(req.query.all ?? false),
  );

  app.get<Ref>('/v1/vms/:ref', { schema: { params: RefParams } }, async (req) => engine.vms.resolve(req.params.ref));

  // Detached run: the VM is running when this answers; its main command runs in the background.
  app.post<{ Body: RunRequest }>('/v1/vms', { schema: { body: RunRequest } }, async (req, reply) => {
    const { vm } = await engine.runs.run({ ...req.body, detach: true });
    reply.code(201);
    return vm;
  });

  app.post<{ Body: RunRequest }>('/v1/vms/run', { schema: { body: RunRequest } }, async (req, reply) => {
    const stream = openNdjson(req, reply);
    try {
      const { vm, result } = await engine.runs.run(
        req.body,
        outputEvents(stream),
        {
          onCreated: (created) => stream.send({ type: 'created', vm: created }),
          onRunning: (running) => stream.send({ type: 'running', vm: running }),
        },
        stream.signal,
      );
      if (result) stream.send({ type: 'exit', ...result });
      stream.send({ type: 'done', vm });
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  app.post<Ref>('/v1/vms/:ref/start', { schema: { params: RefParams } }, async (req) => engine.vms.start(req.params.ref));

  app.post<Ref & { Body: StopRequest }>('/v1/vms/:ref/stop', { schema: { params: RefParams, body: StopRequest } }, async (req) =>
    engine.vms.stop(req.params.ref, req.body?.timeoutSec ?? 10),
  );

  app.delete<Ref & { Querystring: Static<typeof RemoveQuery> }>(
    '/v1/vms/:ref',
    { schema: { params: RefParams, querystring: RemoveQuery } },
    async (req, reply) => {
      await engine.vms.remove(req.params.ref, req.query.force ?? false);
      reply.code(204);
    },
  );

  app.post<Ref & { Body: ExecRequest }>('/v1/vms/:ref/exec', { schema: { params: RefParams, body: ExecRequest } }, async (req, reply) => {
    // Resolve before the stream opens so a bad ref is a plain HTTP error.
    engine.vms.resolve(req.params.ref);
    const stream = openNdjson(req, reply);
    let execId: string | undefined;
    let stdin: PassThrough | undefined;
    if (req.body.stdin) {
      execId = randomUUID();
      stdin = new PassThrough();
      stdinPipes.set(execId, stdin);
      stream.send({ type: 'exec', execId });
    }
    try {
      const result = await engine.vms.exec(
        req.params.ref,
        {
          cmd: req.body.cmd,
          env: req.body.env,
          workingDir: req.body.workingDir,
          user: req.body.user,
          timeoutSec: req.body.timeoutSec,
          stdin,
          signal: stream.signal,
        },
        outputEvents(stream),
      );
      stream.send({ type: 'exit', ...result });
      stream.end();
    } catch (err) {
      stream.fail(err);
    } finally {
      if (execId) stdinPipes.delete(execId);
      stdin?.end();
    }
  });

  app.post<{ Params: { execId: string } }>('/v1/execs/:execId/stdin', async (req, reply) => {
    const pipe = stdinPipes.get(req.params.execId);
    if (!pipe) throw new CellError(ErrorCodes.NOT_FOUND, `no running exec ${req.params.execId} waits for stdin`);
    const body = req.body as NodeJS.ReadableStream | Buffer | undefined;
    if (body && 'pipe' in body) {
      for await (const chunk of body) pipe.write(chunk);
    } else if (body) {
      pipe.write(body);
    }
    pipe.end();
    reply.code(204);
  });

  app.get<Ref & { Querystring: Static<typeof LogsQuery> }>(
    '/v1/vms/:ref/logs',
    { schema: { params: RefParams, querystring: LogsQuery } },
    async (req, reply) => {
      engine.vms.resolve(req.params.ref);
      const stream = openNdjson(req, reply);
      try {
        for await (const entry of engine.vms.readLogs(req.params.ref, req.query.follow ?? false, stream.signal)) {
          stream.send({ type: 'log', ...entry });
        }
        stream.end();
      } catch (err) {
        stream.fail(err);
      }
    },
  );
}
