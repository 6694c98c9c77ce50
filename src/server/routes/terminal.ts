import type { FastifyInstance } from 'fastify';
import { PassThrough } from 'node:stream';
import type { RawData, WebSocket } from 'ws';
import type { ServerMessageOf } from '../../api/contract.js';
import { Value } from '@sinclair/typebox/value';
import { Api } from '../../api/routes.js';
import { TerminalClientMessage } from '../../api/vms.js';
import { toCellError } from '../../domain/errors.js';
import type { Engine } from '../../engine/engine.js';
import { DEFAULT_TTY_SIZE, ExecTerminal } from '../../engine/exec-terminal.js';
import { serveSocket } from '../serve-route.js';
import { wireError } from '../wire-error.js';

const { terminal: terminalRoute } = Api.vms;

/** How often a terminal's browser must answer a ping. */
const HEARTBEAT_MS = 30_000;

/** Output waiting in the socket beyond this holds the guest's shell back (as a slow NDJSON reader does). */
const SEND_HIGH_WATER = 256 * 1024;

/**
 * The dashboard's terminal: a shell on a pseudo-terminal (the exec API's tty) over one WebSocket,
 * since a browser can neither stream a request body over HTTP/1.1 nor hold many streams per origin.
 * Closing the socket ends the shell (its exec is aborted).
 */
export function terminalRoutes(app: FastifyInstance, engine: Engine): void {
  serveSocket(app, terminalRoute, (socket, req) => {
    const abort = new AbortController();
    const stdin = new PassThrough();
    const send = (message: ServerMessageOf<typeof terminalRoute>) => {
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
    };
    let terminal: ExecTerminal;
    try {
      engine.vms.resolve(req.params.ref);
      terminal = new ExecTerminal({ rows: req.query.rows ?? DEFAULT_TTY_SIZE.rows, cols: req.query.cols ?? DEFAULT_TTY_SIZE.cols });
    } catch (err) {
      send({ type: 'error', error: wireError(toCellError(err)) });
      socket.close(1008, 'refused');
      return;
    }
    // Set once the shell has ended (or never started): frames still in flight until the client's
    // close are dropped; a write to the ended stdin would throw in celld.
    let done = false;
    stdin.on('error', () => {});
    // One resize on its way to the guest at a time, the latest size kept: a flood of them (or a
    // guest that never answers) queues nothing.
    let wanted: TerminalClientMessage | undefined;
    let resizing = false;
    const resizeTo = (size: TerminalClientMessage) => {
      wanted = size;
      if (resizing) return;
      resizing = true;
      void (async () => {
        for (let next: TerminalClientMessage | undefined = wanted; next && !done; next = wanted) {
          wanted = undefined;
          await terminal.resize(next).catch(() => {});
        }
        resizing = false;
      })();
    };
    socket.on('message', (data: RawData, isBinary: boolean) => {
      if (done || stdin.writableEnded) return;
      const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      if (isBinary) {
        // Typing faster than the guest reads: stop reading the socket until it catches up.
        if (!stdin.write(bytes)) {
          socket.pause();
          stdin.once('drain', () => socket.resume());
        }
        return;
      }
      const resize = parseResize(bytes);
      if (!resize) {
        socket.close(1003, 'a text frame must be {"type":"resize","cols":N,"rows":N}');
        return;
      }
      resizeTo(resize);
    });
    // A browser gone without a close (a laptop put to sleep) answers no ping: its shell ends.
    let answered = true;
    socket.on('pong', () => (answered = true));
    const heartbeat = setInterval(() => {
      if (!answered) return socket.terminate();
      answered = false;
      socket.ping();
    }, HEARTBEAT_MS);
    heartbeat.unref();
    socket.on('close', () => {
      clearInterval(heartbeat);
      abort.abort();
      stdin.end();
    });
    engine.vms
      .exec(
        req.params.ref,
        {
          cmd: req.query.cmd ? ['/bin/sh', '-c', req.query.cmd] : ['/bin/sh'],
          env: ['TERM=xterm-256color'],
          user: req.query.user,
          stdin,
          terminal,
          signal: abort.signal,
        },
        {
          stdout: (chunk) => sendBytes(socket, chunk),
          stderr: (chunk) => sendBytes(socket, chunk),
          behind: () => behind(socket),
        },
      )
      .then(
        (result) => send({ type: 'exit', ...result }),
        (err: unknown) => send({ type: 'error', error: wireError(toCellError(err)) }),
      )
      .finally(() => {
        done = true;
        stdin.end();
        if (socket.readyState === socket.OPEN) socket.close(1000, 'ended');
      });
  });
}

function sendBytes(socket: WebSocket, chunk: Buffer): void {
  if (socket.readyState === socket.OPEN) socket.send(chunk, { binary: true });
}

/** A promise while the browser is behind, settling once it caught up or went away. */
function behind(socket: WebSocket): Promise<void> | undefined {
  if (socket.bufferedAmount < SEND_HIGH_WATER) return undefined;
  return new Promise((resolve) => {
    const check = setInterval(() => {
      if (socket.readyState !== socket.OPEN || socket.bufferedAmount < SEND_HIGH_WATER / 2) {
        clearInterval(check);
        resolve();
      }
    }, 20);
  });
}

/** A resize message, or null for anything else (a text frame is JSON from the browser: untrusted). */
function parseResize(bytes: Buffer): TerminalClientMessage | null {
  if (bytes.length > 256) return null;
  try {
    const message: unknown = JSON.parse(bytes.toString('utf8'));
    return Value.Check(TerminalClientMessage, message) ? message : null;
  } catch {
    return null;
  }
}
