/**
 * Frame codec of the guest-agent protocol (docs/protocol.md): magic, type, flags, id, length,
 * payload. The decoder resynchronises on the magic so a garbled or half-delivered frame (for
 * example one written before celld reconnected) costs that frame only, not the channel.
 */
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
  OK: 0x80,
  PONG: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  HELLO: 0x86,
  DATA: 0x87,
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

/** Incremental decoder: push bytes as they arrive, get whole frames back. */
export class FrameDecoder {
  private buffered: Buffer = Buffer.alloc(0);
  /** Bytes skipped while looking for a magic; a non-zero count means the stream was garbled. */
  skippedBytes = 0;

  push(chunk: Buffer): Frame[] {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const frames: Frame[] = [];
    for (;;) {
      this.resync();
      if (this.buffered.length < HEADER_SIZE) break;
      const length = this.buffered.readUInt32BE(8);
      if (length > MAX_PAYLOAD) {
        // Not a real frame header: drop the magic and look for the next one.
        this.skip(2);
        continue;
      }
      if (this.buffered.length < HEADER_SIZE + length) break;
      frames.push({
        type: this.buffered[2]!,
        id: this.buffered.readUInt32BE(4),
        payload: Buffer.from(this.buffered.subarray(HEADER_SIZE, HEADER_SIZE + length)),
      });
      this.buffered = this.buffered.subarray(HEADER_SIZE + length);
    }
    return frames;
  }

  private resync(): void {
    let i = 0;
    while (i < this.buffered.length) {
      if (this.buffered[i] === MAGIC_0 && (i + 1 >= this.buffered.length || this.buffered[i + 1] === MAGIC_1)) break;
      i++;
    }
    if (i > 0) this.skip(i);
  }

  private skip(n: number): void {
    this.skippedBytes += n;
    this.buffered = this.buffered.subarray(n);
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
}

export function encodeExec(req: ExecRequest): Buffer {
  const w = new PayloadWriter().u32(req.stdin ? 1 : 0).u32(req.uid).u32(req.gid).string(req.cwd);
  w.u32(req.argv.length);
  for (const a of req.argv) w.string(a);
  w.u32(req.env.length);
  for (const e of req.env) w.string(e);
  return w.build();
}

export function decodeError(payload: Buffer): { code: number; message: string } {
  try {
    const r = new PayloadReader(payload);
    return { code: r.u16(), message: r.string() };
  } catch {
    return { code: 0, message: 'unreadable error frame' };
  }
}

export function decodeExit(payload: Buffer): { signaled: boolean; code: number } {
  const r = new PayloadReader(payload);
  const kind = r.u8();
  return { signaled: kind === 1, code: r.i32() };
}
