/**
 * The connection to one guest agent (docs/protocol.md): the socket, the frame decoder, the
 * requests waiting for their reply, the listeners of stream frames, pausing the socket for a
 * reader that is behind, and the closed state. It knows frames and ids, not what the requests
 * mean: the typed operations are in client.ts and file-transfer.ts, which both work through a
 * channel (per-exec output credit is client.ts's).
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { randomInt } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { AgentErrorCode, FrameDecoder, FrameType, decodeError, encodeFrame, type Frame } from './frame.js';

interface PendingReply {
  resolve: (frame: Frame) => void;
  reject: (err: Error) => void;
  what: string;
  /** The request's timeout, cleared when it is forgotten. */
  timer?: NodeJS.Timeout;
}

/** Receives the stream frames (STDOUT, STDERR, EXIT, DATA) of one id. */
export type StreamListener = (frame: Frame) => void;

/**
 * Requests and their replies are matched by id; exec output and download data share the id
 * space. Every frame but HELLO and the stream frames is a final reply: ERROR rejects the request
 * waiting for it, anything else (OK, PONG, STARTED, ...) resolves it. Frames nobody waits for are
 * dropped. Events: 'hello' (its payload), 'close' (once).
 */
export class AgentChannel extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, PendingReply>();
  private readonly streams = new Map<number, StreamListener>();
  /** Readers that are behind: the socket is paused while any is. */
  private readonly pausedBy = new Set<number>();
  // A VM restored from a snapshot may still run execs the previous connection started (a server
  // a build step left running): their ids live on in the guest. Starting at a random id keeps a
  // new connection's ids clear of them (the agent refuses a duplicate id rather than mix them).
  private nextId = randomInt(1, 0x7fffffff);
  private closedError: CellError | null = null;

  constructor(private readonly socket: Socket) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => this.onClose());
    socket.on('error', () => {
      /* 'close' follows */
    });
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  /** Why the channel closed (AGENT_DISCONNECTED), or null while it is open. */
  get closeError(): CellError | null {
    return this.closedError;
  }

  /** Throws the error that closed the channel, if it is closed. */
  assertOpen(): void {
    if (this.closedError) throw this.closedError;
  }

  allocId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    return id;
  }

  send(type: number, id: number, payload?: Buffer): void {
    this.assertOpen();
    this.socket.write(encodeFrame(type, id, payload));
  }

  /**
   * Sends a frame, then waits while the socket's buffer is full (upload backpressure). A guest
   * that stops reading for `stallMs` fails the wait with a timeout rather than holding the
   * caller forever.
   */
  async sendDrained(type: number, id: number, payload: Buffer, stallMs = 60_000): Promise<void> {
    this.assertOpen();
    if (this.socket.write(encodeFrame(type, id, payload))) return;
    const drained = await new Promise<boolean>((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.socket.off('drain', onDrain);
        this.off('close', onClose);
        resolve(ok);
      };
      const onDrain = () => done(true);
      const onClose = () => done(true);
      const timer = setTimeout(() => done(false), stallMs);
      this.socket.once('drain', onDrain);
      this.once('close', onClose);
    });
    this.assertOpen();
    if (!drained) throw new CellError(ErrorCodes.TIMEOUT, `the guest agent has read nothing for ${stallMs / 1000} s`);
  }

  /** Sends a request and waits for its reply: ERROR, no answer within `timeoutMs` or a close reject. */
  request(type: number, payload: Buffer, id = this.allocId(), timeoutMs = 10_000): Promise<Frame> {
    this.assertOpen();
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CellError(ErrorCodes.TIMEOUT, `the guest agent did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
        what: `frame type ${type}`,
        timer,
      });
      this.send(type, id, payload);
    });
  }

  /**
   * Registers for the final reply of a request whose frames the caller sends itself: OK (or any
   * reply) resolves, ERROR or a closed connection rejects. No timeout. `onReply` sees the reply
   * as it arrives, before any frame read after it (the promise settles only later).
   */
  expectReply(id: number, what: string, onReply?: (frame: Frame) => void): Promise<Frame> {
    this.assertOpen();
    const reply = new Promise<Frame>((resolve, reject) =>
      this.pending.set(id, {
        resolve: (frame) => {
          onReply?.(frame);
          resolve(frame);
        },
        reject,
        what,
      }),
    );
    reply.catch(() => {}); // settled by whoever awaits it, or abandoned with forgetReply
    return reply;
  }

  /** Stops waiting for request `id` (its late replies are then ignored). */
  forgetReply(id: number): void {
    clearTimeout(this.pending.get(id)?.timer);
    this.pending.delete(id);
  }

  /** Routes the stream frames of `id` to `listener` until unlisten (or the close). */
  listen(id: number, listener: StreamListener): void {
    this.streams.set(id, listener);
  }

  unlisten(id: number): void {
    this.streams.delete(id);
  }

  /** Whether a reader that is behind holds the socket paused (no frame arrives meanwhile). */
  get paused(): boolean {
    return this.pausedBy.size > 0;
  }

  /**
   * A reader of `id` that is behind pauses the socket (all of this guest's traffic) until it is
   * not. Downloads use it, and execs on an agent without flow control (client.ts).
   */
  pauseFor(id: number, paused: boolean): void {
    if (paused) this.pausedBy.add(id);
    else this.pausedBy.delete(id);
    if (this.pausedBy.size > 0) this.socket.pause();
    else if (!this.closed) this.socket.resume();
  }

  close(): void {
    this.socket.destroy();
  }

  /**
   * The guest's bytes. Nothing here may throw: an exception out of a socket's 'data' handler is
   * uncaught and ends celld, every VM's daemon. Decoders and listeners report a malformed frame
   * as the failure of the one operation it concerns; should one throw all the same, the
   * connection to this guest is closed with an agent_error that says why, and every request on
   * it is rejected with that error.
   */
  private onData(chunk: Buffer): void {
    try {
      for (const frame of this.decoder.push(chunk)) {
        if (this.closedError) return;
        try {
          this.onFrame(frame);
        } catch (err) {
          const why = err instanceof Error ? err.message : String(err);
          this.abort(
            new CellError(
              ErrorCodes.AGENT_ERROR,
              `the guest agent sent a frame celld could not handle (type 0x${frame.type.toString(16)}, id ${frame.id}, ${frame.payload.length} bytes: ${why}); its connection was closed`,
            ),
          );
          return;
        }
      }
    } catch (err) {
      this.abort(new CellError(ErrorCodes.AGENT_ERROR, `reading the guest agent's frames failed: ${err instanceof Error ? err.message : String(err)}`));
    }
  }

  /** Closes the connection because of what the guest sent: `err` is what every waiter gets. */
  private abort(err: CellError): void {
    this.settleClosed(err);
    this.socket.destroy();
  }

  private onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.HELLO:
        this.emit('hello', frame.payload);
        return;
      case FrameType.OOM:
        this.emit('oom', frame.payload);
        return;
      case FrameType.STDOUT:
      case FrameType.STDERR:
      case FrameType.EXIT:
      case FrameType.DATA:
        this.streams.get(frame.id)?.(frame);
        return;
      case FrameType.ERROR: {
        const pending = this.pending.get(frame.id);
        if (!pending) return;
        this.pending.delete(frame.id);
        pending.reject(errorFrom(frame));
        return;
      }
      default: {
        const pending = this.pending.get(frame.id);
        if (!pending) return;
        this.pending.delete(frame.id);
        pending.resolve(frame);
      }
    }
  }

  private onClose(): void {
    this.settleClosed(new CellError(ErrorCodes.AGENT_DISCONNECTED, 'the connection to the guest agent closed (the VM stopped?)'));
  }

  /** Marks the channel closed (once) and rejects every request still waiting. */
  private settleClosed(err: CellError): void {
    if (this.closedError) return;
    this.closedError = err;
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.streams.clear();
    this.pausedBy.clear();
    for (const p of pending) p.reject(err);
    try {
      this.emit('close');
    } catch {
      // A 'close' listener's failure must not escape the socket's event handler either.
    }
  }
}

/** The CellError of an ERROR frame, carrying the agent's code. */
function errorFrom(frame: Frame): CellError {
  const { code, message } = decodeError(frame.payload);
  // An agent that does not know a frame type predates this celld (a VM booted before an upgrade).
  const hint = code === AgentErrorCode.UNKNOWN_TYPE ? " (the VM's agent is older than celld: restart the VM)" : '';
  return new CellError(cellCodeFor(code), message + hint, { agentCode: code });
}

/** The CellError code for an agent ERROR code: the caller's mistakes are not agent failures. */
function cellCodeFor(agentCode: number) {
  switch (agentCode) {
    case AgentErrorCode.BAD_CWD:
    case AgentErrorCode.WRONG_TYPE:
    case AgentErrorCode.BAD_PATH:
      return ErrorCodes.INVALID_ARGUMENT;
    case AgentErrorCode.NOT_FOUND:
      return ErrorCodes.NOT_FOUND;
    default:
      return ErrorCodes.AGENT_ERROR;
  }
}
