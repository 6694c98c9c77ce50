/**
 * Frame codec of the guest-agent protocol (docs/protocol.md): magic, type, flags, id, length,
 * payload. The decoder resynchronises on the magic so a garbled or half-delivered frame (for
 * example one written before celld reconnected) costs that frame only, not the channel.
 */
import { CellError, ErrorCodes } from '../domain/errors.js';

export const MAGIC_0 = 0xce;
export const MAGIC_1 = 0x11;
export const HEADER_SIZE = 12;
export const MAX_PAYLOAD = 1024 * 1024;

export const FrameType = {
  PING: 0x01,
  EXEC: 0x02,
  STDIN: 0x03,
  KILL: 0x04,
  SET_TIME: 0x05,
  ADD_ENTROPY: 0x06,
  SHUTDOWN: 0x07,
  SIGNAL_ALL: 0x08,
  SET_IDENTITY: 0x09,
  PUT_FILE: 0x0a,
  FILE_DATA: 0x0b,
  FILE_END: 0x0c,
  MKDIR: 0x0d,
  SYMLINK: 0x0e,
  READ_FILE: 0x0f,
  LIST_DIR: 0x10,
  STAT: 0x11,
  CANCEL: 0x12,
  SYNC: 0x13,
  CREDIT: 0x14,
  HOST_HELLO: 0x15,
  FREEZE: 0x16,
  THAW: 0x17,
  RESIZE: 0x18,
  VOLUMES: 0x19,
  OK: 0x80,
  PONG: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  HELLO: 0x86,
  DATA: 0x87,
  OOM: 0x88,
  ERROR: 0x8f,
} as const;

export const AgentErrorCode = {
  MALFORMED: 1,
  BAD_CWD: 2,
  UNKNOWN_ID: 3,
  DUPLICATE_ID: 4,
  UNKNOWN_TYPE: 5,
  LIMIT: 6,
  SYSCALL: 7,
  NOT_FOUND: 8,
  WRONG_TYPE: 9,
  BAD_PATH: 10,
} as const;

export interface Frame {
  type: number;
  id: number;
  payload: Buffer;
}

export function encodeFrame(type: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(HEADER_SIZE);
  header[0] = MAGIC_0;
  header[1] = MAGIC_1;
  header[2] = type;
  header[3] = 0;
  header.writeUInt32BE(id >>> 0, 4);
  header.writeUInt32BE(payload.length, 8);
  return Buffer.concat([header, payload]);
}

/**
 * Incremental decoder: push bytes as they arrive, get whole frames back. Everything it reads is
 * the guest's (hostile) input, so it never throws and its memory is bounded: a header announcing
 * more than MAX_PAYLOAD is treated as garbage (resync), so at most one frame's bytes plus the
 * chunk being pushed are held. Reassembly is linear in the bytes received: chunks are kept in a
 * list and joined once, when the frame they make up is complete (joining on every push cost
 * quadratic time for a frame delivered in small pieces).
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private length = 0;
  /** Bytes needed before parsing can make progress: a header, or a header and its payload. */
  private needed = HEADER_SIZE;
  /** Bytes skipped while looking for a magic; a non-zero count means the stream was garbled. */
  skippedBytes = 0;

  /** Bytes held for a frame not complete yet (at most HEADER_SIZE + MAX_PAYLOAD + one chunk). */
  get bufferedBytes(): number {
    return this.length;
  }

  push(chunk: Buffer): Frame[] {
    if (chunk.length === 0) return [];
    this.chunks.push(chunk);
    this.length += chunk.length;
    if (this.length < this.needed) return [];
    let buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
    const frames: Frame[] = [];
    let pos = 0;
    for (;;) {
      pos = this.resync(buf, pos);
      const left = buf.length - pos;
      if (left < HEADER_SIZE) {
        this.needed = HEADER_SIZE;
        break;
      }
      const length = buf.readUInt32BE(pos + 8);
      if (length > MAX_PAYLOAD) {
        // Not a real frame header: drop the magic and look for the next one.
        this.skippedBytes += 2;
        pos += 2;
        continue;
      }
      if (left < HEADER_SIZE + length) {
        this.needed = HEADER_SIZE + length;
        break;
      }
      frames.push({
        type: buf[pos + 2]!,
        id: buf.readUInt32BE(pos + 4),
        // A copy: the frame must not pin the (up to 1 MiB) buffer it was cut from.
        payload: Buffer.from(buf.subarray(pos + HEADER_SIZE, pos + HEADER_SIZE + length)),
      });
      pos += HEADER_SIZE + length;
    }
    buf = buf.subarray(pos);
    this.chunks = buf.length > 0 ? [buf] : [];
    this.length = buf.length;
    return frames;
  }

  /** The offset of the next magic (or of a last byte that may begin one) at or after `pos`. */
  private resync(buf: Buffer, pos: number): number {
    let i = pos;
    while (i < buf.length) {
      if (buf[i] === MAGIC_0 && (i + 1 >= buf.length || buf[i + 1] === MAGIC_1)) break;
      i++;
    }
    this.skippedBytes += i - pos;
    return i;
  }
}

/** Builds payloads field by field (all integers big-endian, strings length-prefixed). */
export class PayloadWriter {
  private parts: Buffer[] = [];

  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    this.parts.push(b);
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }
  i64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }
  bytes(v: Buffer): this {
    this.parts.push(v);
    return this;
  }
  string(v: string | Buffer): this {
    const bytes = typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
    this.u32(bytes.length);
    this.parts.push(bytes);
    return this;
  }
  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export class PayloadReader {
  private offset = 0;
  constructor(private readonly buf: Buffer) {}

  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new RangeError('payload too short');
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.offset++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.offset);
    this.offset += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  i64(): bigint {
    this.need(8);
    const v = this.buf.readBigInt64BE(this.offset);
    this.offset += 8;
    return v;
  }
  /** A length-prefixed string as its raw bytes (guest file names need not be UTF-8). */
  bytes(): Buffer {
    const len = this.u32();
    this.need(len);
    const b = this.buf.subarray(this.offset, this.offset + len);
    this.offset += len;
    return b;
  }
  get remaining(): number {
    return this.buf.length - this.offset;
  }
  i32(): number {
    this.need(4);
    const v = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return v;
  }
  string(): string {
    const len = this.u32();
    this.need(len);
    const s = this.buf.toString('utf8', this.offset, this.offset + len);
    this.offset += len;
    return s;
  }
}

export interface ExecRequest {
  argv: string[];
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  stdin: boolean;
  /** Ask for per-exec flow control (EXEC flag bit 1): output only as far as CREDIT frames allow. */
  flowControl?: boolean;
  /**
   * Run on a new pseudo-terminal of this size (EXEC flag bit 2): it is the process's stdin, stdout,
   * stderr and controlling terminal, its output comes as STDOUT frames, TERM defaults to
   * xterm-256color.
   */
  tty?: TtySize;
  /**
   * EXEC flag bit 3: run outside the workload cgroup and leave a frozen workload frozen. Only a
   * spare warming up uses it, before any fork has given its guest an identity (engine/spare-pool.ts).
   */
  aside?: boolean;
}

/** A terminal's size in character cells. */
export interface TtySize {
  rows: number;
  cols: number;
}

/** The largest number of rows or columns a terminal may have (the agent enforces it too). */
export const MAX_TTY_DIM = 1000;

/** Throws an invalid_argument CellError unless rows and cols are integers in 1..MAX_TTY_DIM. */
export function checkTtySize(size: TtySize): TtySize {
  for (const [name, v] of [['rows', size.rows], ['cols', size.cols]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > MAX_TTY_DIM) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `terminal ${name} must be an integer within 1..${MAX_TTY_DIM}, got ${v}`);
    }
  }
  return size;
}

/** EXEC flag bits. */
export const ExecFlags = { STDIN: 1, FLOW_CONTROL: 2, TTY: 4, ASIDE: 8 } as const;

/** The output credit a flow-controlled exec starts with (docs/protocol.md, "Flow control"). */
export const EXEC_WINDOW = 256 * 1024;

export function encodeExec(req: ExecRequest): Buffer {
  const flags =
    (req.stdin ? ExecFlags.STDIN : 0) | (req.flowControl ? ExecFlags.FLOW_CONTROL : 0) | (req.tty ? ExecFlags.TTY : 0) | (req.aside ? ExecFlags.ASIDE : 0);
  const w = new PayloadWriter().u32(flags).u32(req.uid).u32(req.gid).string(req.cwd);
  w.u32(req.argv.length);
  for (const a of req.argv) w.string(a);
  w.u32(req.env.length);
  for (const e of req.env) w.string(e);
  if (req.tty) w.u32(req.tty.rows).u32(req.tty.cols);
  return w.build();
}

/** A RESIZE payload: u32 rows, u32 cols. */
export function encodeResize(size: TtySize): Buffer {
  return new PayloadWriter().u32(size.rows).u32(size.cols).build();
}

/** The most of a guest's ERROR message that is kept (it ends up in logs, API answers, terminals). */
export const MAX_ERROR_MESSAGE = 1024;

/**
 * An ERROR payload. Never throws: an unreadable one is code 0. The message is the guest's text,
 * cut to MAX_ERROR_MESSAGE characters, with control characters (terminal escapes, newlines that
 * would forge log lines) replaced by U+FFFD.
 */
export function decodeError(payload: Buffer): { code: number; message: string } {
  try {
    const r = new PayloadReader(payload);
    const code = r.u16();
    const len = r.u32();
    if (len > r.remaining) throw new RangeError('payload too short');
    const raw = payload.subarray(6, 6 + Math.min(len, MAX_ERROR_MESSAGE * 4));
    let message = raw.toString('utf8').replace(/[\x00-\x08\x0a-\x1f\x7f\u0080-\u009f]/g, '\ufffd');
    if (message.length > MAX_ERROR_MESSAGE || raw.length < len) message = `${message.slice(0, MAX_ERROR_MESSAGE)}...`;
    return { code, message };
  } catch {
    return { code: 0, message: 'unreadable error frame' };
  }
}

/**
 * An EXIT payload: u8 kind (0 exited, 1 killed by a signal), i32 code. Exactly 5 bytes, an exit
 * status in 0..255 or a signal in 1..127; anything else is an agent_error CellError (the guest is
 * not trusted to send sane values: an exit code becomes the CLI's exit status).
 */
export function decodeExit(payload: Buffer): { signaled: boolean; code: number } {
  const bad = (why: string) => new CellError(ErrorCodes.AGENT_ERROR, `the guest agent sent a malformed EXIT frame: ${why}`);
  if (payload.length !== 5) throw bad(`${payload.length} bytes of payload instead of 5`);
  const kind = payload.readUInt8(0);
  const code = payload.readInt32BE(1);
  if (kind === 0) {
    if (code < 0 || code > 255) throw bad(`exit status ${code} is not within 0..255`);
    return { signaled: false, code };
  }
  if (kind === 1) {
    if (code < 1 || code > 127) throw bad(`signal ${code} is not within 1..127`);
    return { signaled: true, code };
  }
  throw bad(`unknown kind ${kind}`);
}

/**
 * An OOM frame (the guest kernel's OOM killer ended a process): u32 pid, string name. The name as
 * the guest sent it, not yet made safe (domain/oom.ts); null when the payload is malformed, which
 * is ignored rather than taken for a broken connection: the report is informational.
 */
export function decodeOom(payload: Buffer): { pid: number; name: Buffer } | null {
  if (payload.length < 8) return null;
  const pid = payload.readUInt32BE(0);
  const len = payload.readUInt32BE(4);
  if (len !== payload.length - 8) return null;
  return { pid, name: payload.subarray(8) };
}
