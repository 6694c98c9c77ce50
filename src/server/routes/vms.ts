import { once } from 'node:events';
import { PassThrough } from 'node:stream';
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import type { Static } from '@sinclair/typebox';
import type { LogsQuery, RunRequest as RunRequestSchema } from '../../api/vms.js';
import type { RunRequest } from '../../engine/runs.js';
import type { LogReadOptions } from '../../engine/vms.js';
import { Api } from '../../api/routes.js';
import { hostFsOf } from '../caller-access.js';
import type { Engine } from '../../engine/engine.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { openStream, outputEvents } from '../ndjson.js';
import { serve } from '../serve-route.js';
import { DEFAULT_TTY_SIZE, ExecTerminal } from '../../engine/exec-terminal.js';

const { vms } = Api;

export function vmRoutes(app: FastifyInstance, engine: Engine): void {
  /** Stdin pipes of running execs that asked for one, by exec id. */
  const stdinPipes = new Map<string, PassThrough>();
  /** Terminals of running execs started with tty, by exec id. */
  const terminals = new Map<string, ExecTerminal>();

  serve(app, vms.list, async (req) => engine.vms.list(req.query.all ?? false));

  serve(app, vms.get, async (req) => engine.vms.inspect(req.params.ref));

  // Detached run: the VM is running when this answers; its main command runs in the background.
  serve(app, vms.create, async (req) => {
    const { vm } = await engine.runs.run({ ...runRequest(req.body), hostFs: hostFsOf(req), detach: true });
    return vm;
  });

  serve(app, vms.run, async (req, reply) => {
    const stream = openStream(vms.run, req, reply);
    try {
      const { vm, result } = await engine.runs.run(
        { ...runRequest(req.body), hostFs: hostFsOf(req) },
        outputEvents(stream),
        {
          onCreated: (created) => stream.send({ type: 'created', vm: created }),
          onRunning: (running) => stream.send({ type: 'running', vm: running }),
          onSession: (session) => {
            if (session.stdin || session.terminal) stream.send({ type: 'exec', execId: session.id });
          },
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

  serve(app, vms.wait, async (req, reply) => {
    engine.vms.resolve(req.params.ref);
    const stream = openStream(vms.wait, req, reply);
    try {
      const vm = await engine.wait(req.params.ref, {
        until: req.body?.until ?? 'stopped',
        timeoutMs: req.body?.timeoutMs,
        signal: stream.signal,
        onHealth: (changed) => stream.send({ type: 'health', vm: changed }),
      });
      stream.send({ type: 'done', vm });
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  serve(app, vms.start, async (req) => engine.vms.start(req.params.ref));
  serve(app, vms.update, async (req) => engine.vms.update(req.params.ref, req.body ?? {}));
  serve(app, vms.pause, async (req) => (req.body?.toDisk ? engine.suspends.suspend(req.params.ref) : engine.vms.pause(req.params.ref)));
  serve(app, vms.unpause, async (req) => engine.suspends.resume(req.params.ref));

  serve(app, vms.stop, async (req) => engine.vms.stop(req.params.ref, req.body?.timeoutSec ?? 10));

  serve(app, vms.remove, async (req) => {
    await engine.vms.remove(req.params.ref, req.query.force ?? false);
  });

  serve(app, vms.exec, async (req, reply) => {
    // Resolve before the stream opens so a bad ref is a plain HTTP error.
    engine.vms.resolve(req.params.ref);
    const stream = openStream(vms.exec, req, reply);
    let execId: string | undefined;
    let stdin: PassThrough | undefined;
    let terminal: ExecTerminal | undefined;
    if (req.body.stdin || req.body.tty) {
      execId = randomUUID();
      if (req.body.stdin) {
        stdin = new PassThrough();
        stdinPipes.set(execId, stdin);
      }
      if (req.body.tty) {
        terminal = new ExecTerminal({ rows: req.body.rows ?? DEFAULT_TTY_SIZE.rows, cols: req.body.cols ?? DEFAULT_TTY_SIZE.cols });
        terminals.set(execId, terminal);
      }
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
          terminal,
          signal: stream.signal,
        },
        outputEvents(stream),
      );
      stream.send({ type: 'exit', ...result });
      stream.end();
    } catch (err) {
      stream.fail(err);
    } finally {
      if (execId) {
        stdinPipes.delete(execId);
        terminals.delete(execId);
      }
      stdin?.end();
    }
  });

  serve(app, vms.attach, async (req, reply) => {
    const vm = engine.vms.resolve(req.params.ref);
    const session = engine.runs.sessions.require(vm.id, vm.name);
    const stream = openStream(vms.attach, req, reply);
    if (session.stdin || session.terminal) stream.send({ type: 'exec', execId: session.id });
    const detach = session.attach(outputEvents(stream));
    // An attached user is a use of the VM (`--idle-timeout`) for as long as they stay.
    const used = engine.vms.activity.begin(vm.id);
    const left = new Promise<null>((resolve) => stream.signal.addEventListener('abort', () => resolve(null), { once: true }));
    const result = await Promise.race([session.ended, left]);
    detach();
    used();
    if (result) stream.send({ type: 'exit', ...result });
    stream.end();
  });

  serve(app, vms.execResize, async (req) => {
    const terminal = terminals.get(req.params.execId) ?? engine.runs.sessions.byExecId(req.params.execId)?.terminal;
    if (!terminal) throw new CellError(ErrorCodes.NOT_FOUND, `no running exec ${req.params.execId} has a terminal`);
    await terminal.resize({ rows: req.body.rows, cols: req.body.cols });
  });

  serve(app, vms.execStdin, async (req) => {
    const pipe = stdinPipes.get(req.params.execId) ?? engine.runs.sessions.byExecId(req.params.execId)?.stdin;
    if (!pipe) throw new CellError(ErrorCodes.NOT_FOUND, `no running exec ${req.params.execId} waits for stdin`);
    // A body cut off (a client that detached, `cell attach`'s Ctrl-P Ctrl-Q) leaves stdin open;
    // only its end closes it.
    for await (const chunk of bodyChunks(req.body)) if (!pipe.write(chunk)) await once(pipe, 'drain');
    pipe.end();
  });

  serve(app, vms.console, async (req, reply) => {
    const vm = engine.vms.resolve(req.params.ref);
    let stream: ReturnType<typeof openStream<typeof vms.console>> | undefined;
    let session;
    try {
      // Opened before the stream, so a busy or stopped console is a plain error answer.
      const pending: Buffer[] = [];
      session = await engine.consoles.open(req.params.ref, {
        data: (bytes) => (stream ? stream.send({ type: 'data', data: bytes.toString('base64') }) : pending.push(bytes)),
        behind: () => stream?.behind(),
      });
      stream = openStream(vms.console, req, reply);
      stream.send({ type: 'attached', session: session.id });
      for (const bytes of pending) stream.send({ type: 'data', data: bytes.toString('base64') });
      stream.signal.addEventListener('abort', () => session!.close());
      const used = engine.vms.activity.begin(vm.id);
      await session.ended.finally(used);
      stream.end();
    } catch (err) {
      session?.close();
      if (stream) stream.fail(err);
      else throw err;
    }
  });

  serve(app, vms.consoleInput, async (req) => {
    const session = engine.consoles.session(req.params.session);
    for await (const chunk of bodyChunks(req.body)) await session.write(chunk);
  });

  serve(app, vms.logs, async (req, reply) => {
    engine.vms.resolve(req.params.ref);
    const stream = openStream(vms.logs, req, reply);
    try {
      for await (const entry of engine.vms.readLogs(req.params.ref, logOptions(req.query), stream.signal)) {
        stream.send({ type: 'log', ...entry });
      }
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  statsRoute(app, engine);
}

/** `cell stats`: one sample over a second, or (stream) one per second until the client goes. */
function statsRoute(app: FastifyInstance, engine: Engine): void {
  serve(app, vms.stats, async (req, reply) => {
    // Resolve before the stream opens so a bad ref is a plain HTTP error.
    engine.vms.resolve(req.params.ref);
    const stream = openStream(vms.stats, req, reply);
    try {
      // The stream's signal aborts when the client leaves, which clears the sampler's timer.
      for await (const stats of engine.stats.stream(req.params.ref, { signal: stream.signal })) {
        stream.send({ type: 'stats', stats });
        if (!req.query.stream) break;
        await stream.behind();
      }
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  serve(app, vms.statsAll, async (req, reply) => {
    const stream = openStream(vms.statsAll, req, reply);
    try {
      for await (const rows of engine.stats.everyRunning({ signal: stream.signal })) {
        for (const stats of rows) stream.send({ type: 'stats', stats });
        if (!req.query.stream) break;
        await stream.behind();
      }
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });
}

function logOptions(query: Static<typeof LogsQuery>): LogReadOptions {
  const at = (iso: string | undefined) => (iso === undefined ? undefined : new Date(iso));
  return { follow: query.follow ?? false, tail: query.tail, since: at(query.since), until: at(query.until) };
}

/** A raw (octet-stream) body's bytes: as they arrive from a stream, or at once from a buffer. */
async function* bodyChunks(body: unknown): AsyncGenerator<Buffer> {
  if (body && typeof body === 'object' && 'pipe' in body) {
    for await (const chunk of body as unknown as AsyncIterable<Buffer | string>) yield typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
  } else if (Buffer.isBuffer(body)) yield body;
}

/** The wire's run request as the engine's: `tty` with its size. */
function runRequest(body: Static<typeof RunRequestSchema>): RunRequest {
  const { tty, cols, rows, stdin, ...rest } = body;
  return {
    ...rest,
    ...(stdin ? { interactive: true } : {}),
    ...(tty ? { tty: { cols: cols ?? DEFAULT_TTY_SIZE.cols, rows: rows ?? DEFAULT_TTY_SIZE.rows } } : {}),
  };
}
