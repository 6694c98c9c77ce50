import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { randomBytes, randomInt } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import {
  AgentErrorCode,
  FrameDecoder,
  FrameType,
  PayloadReader,
  PayloadWriter,
  decodeError,
  decodeExit,
  encodeExec,
  encodeFrame,
  type ExecRequest,
  type Frame,
} from './frame.js';
import {
  decodeStat,
  encodeMkdir,
  encodeStat,
  encodeSymlink,
  type GuestDirEntry,
  type GuestOwnership,
  type GuestStat,
  type PutFileMeta,
} from './file-frames.js';
import * as files from './file-transfer.js';

export interface ExecExit {
  /** Exit status when the process exited, else null. */
  exitCode: number | null;
  /** Signal number when the process was killed by one, else null. */
  signal: number | null;
}

export interface ExecHandlers {
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

/** One running guest process: its output arrives through the handlers, `exit` settles once. */
export class ExecSession {
  readonly exit: Promise<ExecExit>;
  private settle!: { resolve: (e: ExecExit) => void; reject: (err: Error) => void };
  pid: number | null = null;

  constructor(
    private readonly client: AgentClient,
    readonly id: number,
    readonly handlers: ExecHandlers,
  ) {
    this.exit = new Promise<ExecExit>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // An exec nobody awaits must not crash the process with an unhandled rejection.
    this.exit.catch(() => {});
  }

  writeStdin(data: Buffer): void {
    if (data.length === 0) return;
    for (let off = 0; off < data.length; off += 65536) {
      this.client.send(FrameType.STDIN, this.id, data.subarray(off, off + 65536));
    }
  }

  closeStdin(): void {
    this.client.send(FrameType.STDIN, this.id);
  }

  /** Signals the process group; resolves once the agent acknowledged. */
  kill(signal = 9): Promise<void> {
    return this.client.request(FrameType.KILL, new PayloadWriter().u32(signal).build(), this.id).then(() => undefined);
  }

  /** @internal */
  finish(exit: ExecExit): void {
    this.settle.resolve(exit);
  }

  /** @internal */
  fail(err: Error): void {
    this.settle.reject(err);
  }
}

interface PendingRequest {
  resolve: (frame: Frame) => void;
  reject: (err: Error) => void;
  what: string;
}

/**
 * Host side of the agent protocol over the VM's virtio-serial socket. Requests and execs are
 * multiplexed by id; control replies and exec streams share the id space.
 */
export class AgentClient extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, PendingRequest>();
  private readonly execs = new Map<number, ExecSession>();
  private readonly starting = new Map<number, { resolve: (pid: number) => void; reject: (err: Error) => void }>();
  /** DATA frames of downloads in progress, by id. */
  private readonly dataSinks = new Map<number, (payload: Buffer) => void>();
  /** Downloads whose reader is behind: the socket is paused while any is. */
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

  /** Resolves once the guest answers a PING, retrying every `intervalMs` until the deadline. */
  async waitReady(deadline: number, intervalMs = 20): Promise<void> {
    const nonce = randomBytes(8);
    let answered = false;
    const id = this.allocId();
    const ready = new Promise<void>((resolve, reject) => {
      this.pending.set(id, {
        resolve: () => {
          answered = true;
          resolve();
        },
        reject,
        what: 'ping',
      });
    });
    // Every PING carries the same id: whichever one the guest answers first settles the wait.
    const tick = () => {
      if (answered || this.closed) return;
      this.send(FrameType.PING, id, nonce);
    };
    tick();
    const timer = setInterval(tick, intervalMs);
    try {
      await Promise.race([
        ready,
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new CellError(ErrorCodes.BOOT_TIMEOUT, 'the guest agent did not answer')), Math.max(0, deadline - Date.now())),
        ),
      ]);
    } finally {
      clearInterval(timer);
      this.pending.delete(id);
    }
  }

  async ping(timeoutMs = 5000): Promise<number> {
    const started = performance.now();
    await this.request(FrameType.PING, randomBytes(8), undefined, timeoutMs);
    return performance.now() - started;
  }

  /** Starts a process; resolves with its session once the agent reports it running. */
  async exec(req: ExecRequest, handlers: ExecHandlers = {}): Promise<ExecSession> {
    this.assertOpen();
    const id = this.allocId();
    const session = new ExecSession(this, id, handlers);
    this.execs.set(id, session);
    const pid = await new Promise<number>((resolve, reject) => {
      this.starting.set(id, { resolve, reject });
      this.send(FrameType.EXEC, id, encodeExec(req));
    }).catch((err: unknown) => {
      this.execs.delete(id);
      throw err;
    });
    session.pid = pid;
    return session;
  }

  async setTime(date: Date = new Date()): Promise<void> {
    const ms = BigInt(date.getTime());
    const payload = new PayloadWriter().i64(ms / 1000n).u32(Number(ms % 1000n) * 1_000_000).build();
    await this.request(FrameType.SET_TIME, payload);
  }

  async addEntropy(bytes: Buffer = randomBytes(256)): Promise<void> {
    await this.request(FrameType.ADD_ENTROPY, bytes);
  }

  /**
   * Gives the guest a new identity: its hostname (and /etc/hostname) and, when `machineId` is given
   * (32 lowercase hex digits), the machine-id files the image has. A fork gets one before any user
   * command runs.
   */
  async setIdentity(identity: { hostname: string; machineId?: string }): Promise<void> {
    const payload = new PayloadWriter().string(identity.hostname).string(identity.machineId ?? '').build();
    await this.request(FrameType.SET_IDENTITY, payload);
  }

  /** Sends a signal to every guest process but the agent; returns how many were signalled. */
  async signalAll(signal: number): Promise<number> {
    const reply = await this.request(FrameType.SIGNAL_ALL, new PayloadWriter().u32(signal).build());
    return reply.payload.length >= 4 ? new PayloadReader(reply.payload).u32() : 0;
  }

  /** Flushes the guest's page cache to its disks (before a snapshot freezes the disk layer). */
  async sync(timeoutMs = 30_000): Promise<void> {
    await this.request(FrameType.SYNC, Buffer.alloc(0), undefined, timeoutMs);
  }

  async shutdown(reboot = false): Promise<void> {
    await this.request(FrameType.SHUTDOWN, new PayloadWriter().u8(reboot ? 1 : 0).build());
  }

  // File operations: the implementations live in file-transfer.ts.

  /**
   * Creates or atomically replaces the regular file `path` (absolute) in the guest with the bytes
   * of `source`, streamed with backpressure; missing parent directories are created (0755, root).
   * Resolves with the size once the file is in place. If `source` throws, the upload is
   * cancelled (the guest is left unchanged) and the error rethrown.
   */
  putFile(path: string, meta: PutFileMeta, source: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<number> {
    return files.putFile(this, path, meta, source);
  }

  /** Creates a directory (and missing parents), or sets the mode and owner of an existing one. */
  async mkdir(path: string, own: GuestOwnership): Promise<void> {
    await this.request(FrameType.MKDIR, encodeMkdir(path, own));
  }

  /** Creates a symlink at `path`, atomically replacing whatever entry (not a directory) is there. */
  async symlink(path: string, target: string, own: { uid?: number; gid?: number } = {}): Promise<void> {
    await this.request(FrameType.SYMLINK, encodeSymlink(path, target, own));
  }

  /** lstat (or stat with `follow`) of a guest path; a missing path is a `not_found` CellError. */
  async stat(path: string, opts: { follow?: boolean } = {}): Promise<GuestStat> {
    return decodeStat((await this.request(FrameType.STAT, encodeStat(path, opts.follow ?? false))).payload);
  }

  /** The entries of a guest directory (not recursive, without . and ..). */
  listDir(path: string): Promise<GuestDirEntry[]> {
    return files.listDir(this, path);
  }

  /**
   * A guest regular file, chunk by chunk as it arrives. With `maxBytes`, a larger file is a
   * `size_limit` CellError. Leaving the loop early cancels the download. A reader that falls
   * behind pauses the whole agent connection until it catches up.
   */
  readFile(path: string, opts: { maxBytes?: number } = {}): AsyncGenerator<Buffer> {
    return files.readFile(this, path, opts.maxBytes ?? 0);
  }

  close(): void {
    this.socket.destroy();
  }

  /** @internal */
  send(type: number, id: number, payload?: Buffer): void {
    this.assertOpen();
    this.socket.write(encodeFrame(type, id, payload));
  }

  /** @internal Sends a frame, then waits while the socket's buffer is full (upload backpressure). */
  async sendDrained(type: number, id: number, payload: Buffer): Promise<void> {
    this.assertOpen();
    if (this.socket.write(encodeFrame(type, id, payload))) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.once('close', done);
    });
    this.assertOpen();
  }

  /** @internal Routes the DATA frames of request `id` to `sink` (null: stop). */
  routeData(id: number, sink: ((payload: Buffer) => void) | null): void {
    if (sink) this.dataSinks.set(id, sink);
    else this.dataSinks.delete(id);
  }

  /**
   * @internal Registers for the final reply of a request whose frames the caller sends itself:
   * OK (or any reply) resolves, ERROR or a closed connection rejects. No timeout.
   */
  expectReply(id: number, what: string): Promise<Frame> {
    this.assertOpen();
    const reply = new Promise<Frame>((resolve, reject) => this.pending.set(id, { resolve, reject, what }));
    reply.catch(() => {}); // settled by whoever awaits it, or abandoned with forgetReply
    return reply;
  }

  /** @internal Stops waiting for request `id` (its late replies are then ignored). */
  forgetReply(id: number): void {
    this.pending.delete(id);
  }

  /** @internal A download whose reader is behind pauses the socket (all of this guest's traffic). */
  pauseFor(id: number, paused: boolean): void {
    if (paused) this.pausedBy.add(id);
    else this.pausedBy.delete(id);
    if (this.pausedBy.size > 0) this.socket.pause();
    else if (!this.closed) this.socket.resume();
  }

  /** @internal */
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
      });
      this.send(type, id, payload);
    });
  }

  /** @internal */
  allocId(): number {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    return id;
  }

  private assertOpen(): void {
    if (this.closedError) throw this.closedError;
  }

  private onData(chunk: Buffer): void {
    for (const frame of this.decoder.push(chunk)) this.onFrame(frame);
  }

  private onFrame(frame: Frame): void {
    switch (frame.type) {
      case FrameType.HELLO:
        this.emit('hello', frame.payload);
        return;
      case FrameType.STARTED: {
        const starting = this.starting.get(frame.id);
        if (!starting) return;
        this.starting.delete(frame.id);
        starting.resolve(frame.payload.length >= 4 ? frame.payload.readUInt32BE(0) : 0);
        return;
      }
      case FrameType.STDOUT:
        this.execs.get(frame.id)?.handlers.onStdout?.(frame.payload);
        return;
      case FrameType.STDERR:
        this.execs.get(frame.id)?.handlers.onStderr?.(frame.payload);
        return;
      case FrameType.DATA:
        this.dataSinks.get(frame.id)?.(frame.payload);
        return;
      case FrameType.EXIT: {
        const session = this.execs.get(frame.id);
        if (!session) return;
        this.execs.delete(frame.id);
        const { signaled, code } = decodeExit(frame.payload);
        session.finish(signaled ? { exitCode: null, signal: code } : { exitCode: code, signal: null });
        return;
      }
      case FrameType.ERROR: {
        const { code, message } = decodeError(frame.payload);
        // An agent that does not know a frame type predates this celld (a VM booted before an upgrade).
        const hint = code === AgentErrorCode.UNKNOWN_TYPE ? " (the VM's agent is older than celld: restart the VM)" : '';
        const err = new CellError(cellCodeFor(code), message + hint, { agentCode: code });
        const starting = this.starting.get(frame.id);
        if (starting) {
          this.starting.delete(frame.id);
          starting.reject(err);
          return;
        }
        const pending = this.pending.get(frame.id);
        if (pending) {
          this.pending.delete(frame.id);
          pending.reject(err);
        }
        return;
      }
      default: {
        const pending = this.pending.get(frame.id);
        if (pending) {
          this.pending.delete(frame.id);
          pending.resolve(frame);
        }
      }
    }
  }

  private onClose(): void {
    if (this.closedError) return;
    this.closedError = new CellError(ErrorCodes.AGENT_DISCONNECTED, 'the connection to the guest agent closed (the VM stopped?)');
    for (const p of this.pending.values()) p.reject(this.closedError);
    for (const s of this.starting.values()) s.reject(this.closedError);
    for (const e of this.execs.values()) e.fail(this.closedError);
    this.pending.clear();
    this.starting.clear();
    this.execs.clear();
    this.dataSinks.clear();
    this.emit('close');
  }
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
