import { CellError, ErrorCodes } from '../../domain/errors.js';

/**
 * Reads exact byte counts from a stream of chunks (a decompressor's output), without copying
 * more than needed. The tar reader asks for 512-byte headers and streams entry bodies through it.
 */
export class ByteSource {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  private ended = false;
  private consumed = 0;
  private readonly iterator: AsyncIterator<Buffer>;

  constructor(source: AsyncIterable<Buffer | Uint8Array>, private readonly what: string) {
    this.iterator = (source as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }

  /** Bytes handed out so far. */
  get position(): number {
    return this.consumed;
  }

  private async fill(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.iterator.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
    if (chunk.length > 0) {
      this.buffered.push(chunk);
      this.bufferedBytes += chunk.length;
    }
    return true;
  }

  private take(n: number): Buffer {
    const first = this.buffered[0]!;
    let out: Buffer;
    if (first.length <= n) {
      this.buffered.shift();
      out = first;
    } else {
      out = first.subarray(0, n);
      this.buffered[0] = first.subarray(n);
    }
    this.bufferedBytes -= out.length;
    this.consumed += out.length;
    return out;
  }

  /** Exactly `n` bytes, or null at a clean end of stream; a stream ending part-way is an error. */
  async readExact(n: number): Promise<Buffer | null> {
    while (this.bufferedBytes < n) {
      if (!(await this.fill())) {
        if (this.bufferedBytes === 0) return null;
        throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${this.what}: the archive ends in the middle of a record (truncated?)`);
      }
    }
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const part = this.take(need);
      parts.push(part);
      need -= part.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Yields the next `n` bytes as they arrive. */
  async *chunks(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.bufferedBytes === 0 && !(await this.fill())) {
        throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${this.what}: the archive ends inside a file's contents (truncated?)`);
      }
      if (this.bufferedBytes === 0) continue;
      const part = this.take(Math.min(left, this.buffered[0]!.length));
      left -= part.length;
      yield part;
    }
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.chunks(n)) {
      /* discarded */
    }
  }

  /** Reads and discards everything left (so a decompressor reports trailing errors, and hashes cover it all). */
  async drain(): Promise<void> {
    this.consumed += this.bufferedBytes;
    this.buffered = [];
    this.bufferedBytes = 0;
    while (await this.fill()) {
      this.consumed += this.bufferedBytes;
      this.buffered = [];
      this.bufferedBytes = 0;
    }
  }

  /** Stops reading early (the consumer failed); lets the producer clean up. */
  async close(): Promise<void> {
    await this.iterator.return?.();
  }
}
