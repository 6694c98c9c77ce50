import type { ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { ErrorEvent, EventOf, StreamRoute } from '../api/contract.js';
import type { OutputEvent } from '../api/common.js';
import { toCellError } from '../domain/errors.js';
import { wireError } from './wire-error.js';

/** An open ndjson response that only takes the events its route declares. */
export interface NdjsonStream<E> {
  send(event: E): void;
  /** Sends an `error` event for whatever was thrown, then ends. */
  fail(err: unknown): void;
  end(): void;
  /** Aborts when the client goes away before the stream ended (Ctrl-C in the CLI). */
  signal: AbortSignal;
  /** Settles when the client has read what was sent, if it is behind; else undefined. */
  behind(): Promise<void> | undefined;
}

/** Takes over the response of a stream route and writes one JSON event per line as things happen. */
export function openStream<R extends StreamRoute>(_def: R, request: FastifyRequest, reply: FastifyReply): NdjsonStream<EventOf<R>> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
  res.flushHeaders();
  const controller = new AbortController();
  let ended = false;
  res.on('close', () => {
    if (!ended) controller.abort();
  });
  // A client that left before the stream opened never closes it again.
  if (res.destroyed) controller.abort();
  const write = (event: EventOf<R> | ErrorEvent) => {
    if (!ended && !res.destroyed) res.write(JSON.stringify(event) + '\n');
  };
  const stream: NdjsonStream<EventOf<R>> = {
    signal: controller.signal,
    send: write,
    fail(err) {
      const e = toCellError(err);
      if (e.code === 'internal') request.log.error({ err }, 'stream failed');
      write({ type: 'error', error: wireError(e) });
      stream.end();
    },
    end() {
      if (ended) return;
      ended = true;
      res.end();
    },
    behind() {
      return ended || res.destroyed || !res.writableNeedDrain ? undefined : drained(res);
    },
  };
  return stream;
}

/**
 * A stream whose work ends in one result: opens it, runs `work`, sends the event it returns as the
 * last line and ends; whatever `work` throws becomes an `error` event.
 */
export async function streamResult<R extends StreamRoute>(
  def: R,
  request: FastifyRequest,
  reply: FastifyReply,
  work: (stream: NdjsonStream<EventOf<R>>) => Promise<EventOf<R>>,
): Promise<void> {
  const stream = openStream(def, request, reply);
  try {
    stream.send(await work(stream));
    stream.end();
  } catch (err) {
    stream.fail(err);
  }
}

/** An output sink that streams a command's stdout and stderr as base64 events. */
export function outputEvents(stream: NdjsonStream<OutputEvent>) {
  return {
    stdout: (chunk: Buffer) => stream.send({ type: 'stdout', data: chunk.toString('base64') }),
    stderr: (chunk: Buffer) => stream.send({ type: 'stderr', data: chunk.toString('base64') }),
    // A client that reads slowly holds the guest's output back instead of celld buffering it.
    behind: () => stream.behind(),
  };
}

/** Settles when a response's buffered bytes were taken by the client, or it went away. */
export function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
