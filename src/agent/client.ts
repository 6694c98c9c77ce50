/**
 * The typed operations of the guest-agent protocol (docs/protocol.md) on top of an AgentChannel:
 * exec sessions, time, entropy, identity, signals, sync, shutdown and the one-frame file
 * requests; uploads and downloads are in file-transfer.ts.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { AgentChannel } from './channel.js';
import {
  EXEC_WINDOW,
  FrameType,
  PayloadReader,
  PayloadWriter,
  checkTtySize,
  decodeExit,
  decodeOom,
  encodeExec,
  encodeResize,
  type ExecRequest,
  type Frame,
  type TtySize,
} from './frame.js';
import { OutputCredit } from './output-credit.js';
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
  /** The guest kernel's OOM killer ended the process (an OOM frame named its pid; signal 9). */
  oomKilled?: boolean;
}

export interface ExecHandlers {
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  /**
   * Asked after each chunk while the reader keeps up: a promise while the reader is behind. Until
   * it settles this exec gets no more output credit, so its process waits (its pipe fills); the
   * other requests on the connection go on. (An agent without flow control, in a VM booted from
   * an older snapshot, is held back by pausing the whole connection instead, as before.)
   */
  behind?: () => Promise<void> | undefined;
}

/** One running guest process: its output arrives through the handlers, `exit` settles once. */
export class ExecSession {
  readonly exit: Promise<ExecExit>;
  private settle!: { resolve: (e: ExecExit) => void; reject: (err: Error) => void };
  pid: number | null = null;
  /** An OOM frame named this exec's process. */
  oomKilled = false;
  /** Whether the agent flow-controls this exec: null until its STARTED says. */
  private flow: boolean | null = null;
  private readonly credit: OutputCredit;
  private behind = false;
  private ended = false;
  private lastRequest: Promise<void> = Promise.resolve();

  constructor(
    private readonly channel: AgentChannel,
    readonly id: number,
    readonly handlers: ExecHandlers,
  ) {
    this.exit = new Promise<ExecExit>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // An exec nobody awaits must not crash the process with an unhandled rejection.
    this.exit.catch(() => {});
    this.credit = new OutputCredit((bytes) => {
      if (!this.ended && !this.channel.closed) this.channel.send(FrameType.CREDIT, this.id, new PayloadWriter().u32(bytes).build());
    });
  }

  writeStdin(data: Buffer): void {
    if (data.length === 0) return;
    for (let off = 0; off < data.length; off += 65536) {
      this.channel.send(FrameType.STDIN, this.id, data.subarray(off, off + 65536));
    }
  }

  closeStdin(): void {
    this.channel.send(FrameType.STDIN, this.id);
  }

  /** Signals the process group; resolves once the agent acknowledged. */
  kill(signal = 9): Promise<void> {
    return this.serial(() => this.channel.request(FrameType.KILL, new PayloadWriter().u32(signal).build(), this.id));
  }

  /**
   * A new size for the exec's terminal (one started with `tty`); the guest's foreground process
   * gets SIGWINCH. Resolves once the agent acknowledged; rejects for an exec without a terminal
   * or one that has ended.
   */
  resize(size: TtySize): Promise<void> {
    checkTtySize(size);
    return this.serial(() => this.channel.request(FrameType.RESIZE, encodeResize(size), this.id));
  }

  /**
   * KILL and RESIZE carry the exec's id, and the channel waits for one reply per id: one of them
   * at a time, in the order asked (a burst of resizes from a window being dragged).
   */
  private serial(send: () => Promise<unknown>): Promise<void> {
    const next = this.lastRequest.then(send, send).then(() => undefined);
    this.lastRequest = next.catch(() => {});
    return next;
  }

  /**
   * The exec's STARTED (called by the AgentClient as it arrives, before any later frame): the
   * pid, and whether the agent took the credit it was offered (8 bytes) or predates flow control.
   */
  started(payload: Buffer): void {
    this.pid = payload.length >= 4 ? payload.readUInt32BE(0) : 0;
    this.flow = payload.length >= 8;
    if (!this.flow && this.behind) this.channel.pauseFor(this.id, true);
    this.updateHold();
  }

  /**
   * A STDOUT or STDERR frame: to its handler, then credit back unless the reader is behind.
   * Throws an agent_error when a flow-controlled guest went past its credit: the AgentClient then
   * ends the exec (kills its process) and nothing more of it is handed to the reader.
   */
  output(frame: Frame): void {
    const n = frame.payload.length;
    if (this.flow !== false && !this.credit.receive(n)) {
      throw new CellError(
        ErrorCodes.AGENT_ERROR,
        `the guest sent ${this.credit.overrun} bytes of output of exec ${this.id} past the ${EXEC_WINDOW}-byte credit it was given (more than one frame): the exec was closed and its process killed`,
      );
    }
    (frame.type === FrameType.STDOUT ? this.handlers.onStdout : this.handlers.onStderr)?.(frame.payload);
    if (!this.behind && !this.ended) {
      const behind = this.handlers.behind?.();
      if (behind) this.hold(behind);
    }
    if (this.flow !== false) this.credit.consumed(n);
  }

  /** Settles `exit` (called by the AgentClient that started the session). */
  finish(exit: ExecExit): void {
    this.end();
    this.settle.resolve(exit);
  }

  /** Rejects `exit`: the connection closed, or the guest broke the protocol, before the process ended. */
  fail(err: Error): void {
    this.end();
    this.settle.reject(err);
  }

  /** Holds the guest back until the reader caught up. */
  private hold(until: Promise<void>): void {
    this.behind = true;
    if (this.flow === false) this.channel.pauseFor(this.id, true);
    this.updateHold();
    const release = () => {
      this.behind = false;
      if (this.flow === false) this.channel.pauseFor(this.id, false);
      this.updateHold();
    };
    until.then(release, release);
  }

  private updateHold(): void {
    this.credit.hold(this.behind || this.flow !== true);
  }

  private end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.flow === false && this.behind) this.channel.pauseFor(this.id, false);
  }
}

/**
 * Host side of the agent protocol over the VM's virtio-serial socket. Events: 'hello' (its
 * payload) and 'close', as the channel reports them, and 'oom' ({ pid, name }: the guest kernel's
 * OOM killer ended a process; the name as the guest sent it, see domain/oom.ts).
 */
export class AgentClient extends EventEmitter {
  private readonly channel: AgentChannel;
  /** Sessions whose EXIT has not come yet: they fail when the connection closes. */
  private readonly execs = new Map<number, ExecSession>();

  /** Over a socket connected to the agent, or over a channel made already. */
  constructor(connection: Socket | AgentChannel) {
    super();
    this.channel = connection instanceof AgentChannel ? connection : new AgentChannel(connection);
    this.channel.on('hello', (payload: Buffer) => this.emit('hello', payload));
    this.channel.on('close', () => this.onClose());
    this.channel.on('oom', (payload: Buffer) => this.onOom(payload));
  }

  /** An OOM kill the guest reported: marks the exec whose process it was, then tells listeners. */
  private onOom(payload: Buffer): void {
    const kill = decodeOom(payload);
    if (!kill) return;
    for (const session of this.execs.values()) if (session.pid === kill.pid) session.oomKilled = true;
    this.emit('oom', kill);
  }

  get closed(): boolean {
    return this.channel.closed;
  }

  /**
   * Announces a new connection (HOST_HELLO), then resolves once the guest answers a PING, retrying
   * every `intervalMs` until the deadline. Every connection starts with it, before any exec.
   */
  async waitReady(deadline: number, intervalMs = 20): Promise<void> {
    const nonce = randomBytes(8);
    let answered = false;
    const id = this.channel.allocId();
    // A connection that closed already never answers: the wait runs into the deadline.
    const ready = this.channel.closed
      ? new Promise<never>(() => {})
      : this.channel.expectReply(id, 'ping').then(() => {
          answered = true;
        });
    // A new connection knows none of the execs an earlier one started (a server a build step left
    // running in a snapshot): nobody will grant them credit, so the agent lets their output flow
    // again (and this side drops it). An agent that predates this answers ERROR on id 0: ignored.
    if (!this.closed) this.channel.send(FrameType.HOST_HELLO, 0);
    // Every PING carries the same id: whichever one the guest answers first settles the wait.
    const tick = () => {
      if (answered || this.closed) return;
      this.channel.send(FrameType.PING, id, nonce);
    };
    tick();
    const timer = setInterval(tick, intervalMs);
    let expiry: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        ready,
        new Promise<never>((_, reject) => {
          expiry = setTimeout(() => reject(new CellError(ErrorCodes.BOOT_TIMEOUT, 'the guest agent did not answer')), Math.max(0, deadline - Date.now()));
        }),
      ]);
    } finally {
      // Left running, the deadline's timer would hold a process that is done for the whole boot timeout.
      clearTimeout(expiry);
      clearInterval(timer);
      this.channel.forgetReply(id);
    }
  }

  async ping(timeoutMs = 5000): Promise<number> {
    const started = performance.now();
    await this.channel.request(FrameType.PING, randomBytes(8), undefined, timeoutMs);
    return performance.now() - started;
  }

  /** Starts a process; resolves with its session once the agent reports it running (STARTED). */
  async exec(req: ExecRequest, handlers: ExecHandlers = {}): Promise<ExecSession> {
    if (req.tty) checkTtySize(req.tty);
    const id = this.channel.allocId();
    const session = new ExecSession(this.channel, id, handlers);
    // STARTED is EXEC's reply; the output and EXIT that follow are stream frames of the id. The
    // session learns of STARTED as it arrives: output may follow in the same read.
    const started = this.channel.expectReply(id, 'exec', (reply) => session.started(reply.payload)); // throws if the connection closed
    this.execs.set(id, session);
    this.channel.listen(id, (frame) => this.onExecFrame(session, frame));
    try {
      this.channel.send(FrameType.EXEC, id, encodeExec({ ...req, flowControl: true }));
      await started;
    } catch (err) {
      this.execs.delete(id);
      this.channel.unlisten(id);
      this.channel.forgetReply(id);
      throw err;
    }
    return session;
  }

  async setTime(date: Date = new Date()): Promise<void> {
    const ms = BigInt(date.getTime());
    const payload = new PayloadWriter().i64(ms / 1000n).u32(Number(ms % 1000n) * 1_000_000).build();
    await this.channel.request(FrameType.SET_TIME, payload);
  }

  async addEntropy(bytes: Buffer = randomBytes(256)): Promise<void> {
    await this.channel.request(FrameType.ADD_ENTROPY, bytes);
  }

  /**
   * Gives the guest a new identity: its hostname (and /etc/hostname) and, when `machineId` is given
   * (32 lowercase hex digits), the machine-id files the image has. A fork gets one before any user
   * command runs.
   */
  async setIdentity(identity: { hostname: string; machineId?: string }): Promise<void> {
    const payload = new PayloadWriter().string(identity.hostname).string(identity.machineId ?? '').build();
    await this.channel.request(FrameType.SET_IDENTITY, payload);
  }

  /** Sends a signal to every guest process but the agent; returns how many were signalled. */
  async signalAll(signal: number): Promise<number> {
    const reply = await this.channel.request(FrameType.SIGNAL_ALL, new PayloadWriter().u32(signal).build());
    return reply.payload.length >= 4 ? new PayloadReader(reply.payload).u32() : 0;
  }

  /** Flushes the guest's page cache to its disks (before a snapshot freezes the disk layer). */
  async sync(timeoutMs = 30_000): Promise<void> {
    await this.channel.request(FrameType.SYNC, Buffer.alloc(0), undefined, timeoutMs);
  }

  /**
   * Stops every process the host started in the guest (their cgroup is frozen) before a snapshot
   * pauses the VM; false when the guest could not (an older agent, a process stuck in the kernel
   * past a second), and the snapshot then goes on without it.
   */
  async freeze(timeoutMs = 3000): Promise<boolean> {
    return this.channel.request(FrameType.FREEZE, Buffer.alloc(0), undefined, timeoutMs).then(
      () => true,
      () => false,
    );
  }

  /** Lets them run again: after a snapshot's reseed in every VM that comes out of it. */
  async thaw(): Promise<void> {
    await this.channel.request(FrameType.THAW, Buffer.alloc(0)).catch((err: unknown) => {
      // An agent older than FREEZE froze nothing.
      if (!(err instanceof Error && /unknown (frame )?type/i.test(err.message))) throw err;
    });
  }

  /**
   * Unmounts the VM's named volumes (synced first) before a snapshot, so its RAM holds no file
   * system state of theirs; a volume still in use is mounted back and the request fails naming it.
   */
  async unmountVolumes(timeoutMs = 30_000): Promise<void> {
    await this.channel.request(FrameType.VOLUMES, Buffer.from([0]), undefined, timeoutMs);
  }

  /** Mounts them again (a VM restored from such a snapshot, or the one snapshotted, if it failed). */
  async mountVolumes(timeoutMs = 30_000): Promise<void> {
    await this.channel.request(FrameType.VOLUMES, Buffer.from([1]), undefined, timeoutMs);
  }

  async shutdown(reboot = false): Promise<void> {
    await this.channel.request(FrameType.SHUTDOWN, new PayloadWriter().u8(reboot ? 1 : 0).build());
  }

  /**
   * Creates or atomically replaces the regular file `path` (absolute) in the guest with the bytes
   * of `source`, streamed with backpressure; missing parent directories are created (0755, root).
   * Resolves with the size once the file is in place. If `source` throws, the upload is
   * cancelled (the guest is left unchanged) and the error rethrown.
   */
  putFile(path: string, meta: PutFileMeta, source: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<number> {
    return files.putFile(this.channel, path, meta, source);
  }

  /** Creates a directory (and missing parents), or sets the mode and owner of an existing one. */
  async mkdir(path: string, own: GuestOwnership): Promise<void> {
    await this.channel.request(FrameType.MKDIR, encodeMkdir(path, own));
  }

  /** Creates a symlink at `path`, atomically replacing whatever entry (not a directory) is there. */
  async symlink(path: string, target: string, own: { uid?: number; gid?: number } = {}): Promise<void> {
    await this.channel.request(FrameType.SYMLINK, encodeSymlink(path, target, own));
  }

  /** lstat (or stat with `follow`) of a guest path; a missing path is a `not_found` CellError. */
  async stat(path: string, opts: { follow?: boolean } = {}): Promise<GuestStat> {
    const reply = await this.channel.request(FrameType.STAT, encodeStat(path, opts.follow ?? false));
    try {
      return decodeStat(reply.payload);
    } catch {
      throw new CellError(ErrorCodes.AGENT_ERROR, `the guest agent's STAT reply for ${path} does not parse (${reply.payload.length} bytes)`);
    }
  }

  /** The entries of a guest directory (not recursive, without . and ..). */
  listDir(path: string): Promise<GuestDirEntry[]> {
    return files.listDir(this.channel, path);
  }

  /**
   * A guest regular file, chunk by chunk as it arrives. With `maxBytes`, a larger file is a
   * `size_limit` CellError. Leaving the loop early cancels the download. A reader that falls
   * behind pauses the whole agent connection until it catches up.
   */
  readFile(path: string, opts: { maxBytes?: number } = {}): AsyncGenerator<Buffer> {
    return files.readFile(this.channel, path, opts.maxBytes ?? 0);
  }

  close(): void {
    this.channel.close();
  }

  /**
   * Output goes to the session's handlers; EXIT ends the session. Other frames are not an exec's.
   * Never throws (it runs in the socket's data handler): a malformed EXIT fails the session with
   * an agent_error, and a handler that throws fails its session (the process is killed) rather
   * than the connection.
   */
  private onExecFrame(session: ExecSession, frame: Frame): void {
    try {
      switch (frame.type) {
        case FrameType.STDOUT:
        case FrameType.STDERR:
          session.output(frame);
          return;
        case FrameType.EXIT: {
          this.endSession(session);
          const { signaled, code } = decodeExit(frame.payload);
          session.finish(signaled ? { exitCode: null, signal: code, ...(session.oomKilled && code === 9 ? { oomKilled: true } : {}) } : { exitCode: code, signal: null });
          return;
        }
      }
    } catch (err) {
      const ended = frame.type === FrameType.EXIT;
      this.endSession(session);
      session.fail(err instanceof CellError ? err : new CellError(ErrorCodes.AGENT_ERROR, `exec ${session.id}: ${(err as Error)?.message ?? String(err)}`, undefined, { cause: err }));
      // Output nobody can take any more: stop the process rather than let it run unobserved.
      if (!ended && !this.channel.closed) this.channel.send(FrameType.KILL, session.id, new PayloadWriter().u32(9).build());
    }
  }

  private endSession(session: ExecSession): void {
    this.execs.delete(session.id);
    this.channel.unlisten(session.id);
  }

  private onClose(): void {
    const err = this.channel.closeError!;
    for (const e of this.execs.values()) e.fail(err);
    this.execs.clear();
    this.emit('close');
  }
}

