import type { FastifyReply, FastifyRequest } from 'fastify';
import type { StreamEvent } from '../api/schemas.js';
import { toCellError } from '../domain/errors.js';

export interface NdjsonStream {
  send(event: StreamEvent): void;
  /** Sends an `error` event for whatever was thrown, then ends. */
  fail(err: unknown): void;
  end(): void;
  /** Aborts when the client goes away before the stream ended (Ctrl-C in the CLI). */
  signal: AbortSignal;
}

/** Takes over the response and writes one JSON event per line as things happen. */
export function openNdjson(request: FastifyRequest, reply: FastifyReply): NdjsonStream {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  res.flushHeaders();
  const controller = new AbortController();
  let ended = false;
  res.on('close', () => {
    if (!ended) controller.abort();
  });
  const stream: NdjsonStream = {
    signal: controller.signal,
    send(event) {
      if (!ended && !res.destroyed) res.write(JSON.stringify(event) + '\n');
    },
    fail(err) {
      const e = toCellError(err);
      if (e.code === 'internal') request.log.error({ err }, 'stream failed');
      stream.send({ type: 'error', error: { code: e.code, message: e.message, details: e.details } });
      stream.end();
    },
    end() {
      if (ended) return;
      ended = true;
      res.end();
    },
  };
  return stream;
}

/**
 * A stream whose work ends in one result: opens it, runs `work`, sends the event it returns as the
 * last line and ends; whatever `work` throws becomes an `error` event.
 */
export async function streamResult(request: FastifyRequest, reply: FastifyReply, work: (stream: NdjsonStream) => Promise<StreamEvent>): Promise<void> {
  const stream = openNdjson(request, reply);
  try {
    stream.send(await work(stream));
    stream.end();
  } catch (err) {
    stream.fail(err);
  }
}

export function outputEvents(stream: NdjsonStream) {
  return {
    stdout: (chunk: Buffer) => stream.send({ type: 'stdout', data: chunk.toString('base64') }),
    stderr: (chunk: Buffer) => stream.send({ type: 'stderr', data: chunk.toString('base64') }),
  };
}
