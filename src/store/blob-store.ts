import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * Content-addressed blobs (layers, configs, manifests) at `<root>/blobs/sha256/<hex>`. A blob only
 * gets its final name after every byte was hashed and counted against what was expected, written
 * through a temp file in the same dir, fsynced and renamed: a reader never sees a partial or wrong
 * blob, and a crash leaves only `.tmp-*` files, which `removeStaleTemps` clears.
 */
const HEX = /^[a-f0-9]{64}$/;
const TEMP_PREFIX = '.tmp-';

export interface BlobInfo {
  digest: string;
  size: number;
  mtimeMs: number;
}

export interface Expected {
  digest?: string;
  size?: number;
  /** Named in errors: "layer 2 of docker.io/library/debian:12". */
  what?: string;
}

function hexOf(digest: string): string {
  const hex = digest.startsWith('sha256:') ? digest.slice(7) : '';
  if (!HEX.test(hex)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `not a sha256 digest: ${digest.slice(0, 80)}`);
  return hex;
}

export class BlobStore {
  readonly dir: string;

  constructor(root: string) {
    this.dir = join(root, 'blobs', 'sha256');
  }

  path(digest: string): string {
    return join(this.dir, hexOf(digest));
  }

  async size(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.path(digest))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Present with the expected size (a blob's size is part of its descriptor). */
  async has(digest: string, size?: number): Promise<boolean> {
    const actual = await this.size(digest);
    return actual !== undefined && (size === undefined || actual === size);
  }

  read(digest: string): Promise<Buffer> {
    return readFile(this.path(digest));
  }

  /** Marks a blob as recently used, so a garbage collection running alongside a pull spares it. */
  async touch(digest: string): Promise<void> {
    const now = new Date();
    await utimes(this.path(digest), now, now).catch(() => undefined);
  }

  async delete(digest: string): Promise<boolean> {
    const path = this.path(digest);
    try {
      await stat(path);
    } catch {
      return false;
    }
    await rm(path, { force: true });
    return true;
  }

  /** Every committed blob (for garbage collection and accounting). */
  async list(): Promise<BlobInfo[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: BlobInfo[] = [];
    for (const name of names) {
      if (!HEX.test(name)) continue;
      const s = await stat(join(this.dir, name)).catch(() => undefined);
      if (s?.isFile()) out.push({ digest: `sha256:${name}`, size: s.size, mtimeMs: s.mtimeMs });
    }
    return out;
  }

  /** Temp files left by a crashed writer, older than `olderThanMs`. */
  async removeStaleTemps(olderThanMs: number): Promise<number> {
    let removed = 0;
    const names = await readdir(this.dir).catch(() => [] as string[]);
    for (const name of names) {
      if (!name.startsWith(TEMP_PREFIX)) continue;
      const s = await stat(join(this.dir, name)).catch(() => undefined);
      if (s && Date.now() - s.mtimeMs > olderThanMs) {
        await rm(join(this.dir, name), { force: true });
        removed++;
      }
    }
    return removed;
  }

  async writer(expected: Expected = {}): Promise<BlobWriter> {
    if (expected.digest !== undefined) hexOf(expected.digest);
    await mkdir(this.dir, { recursive: true });
    const tmp = join(this.dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o644);
    return new BlobWriter(this, tmp, fh, expected);
  }

  /** Stores bytes held in memory (manifests, configs); returns the digest. */
  async put(data: Buffer, expected: Expected = {}): Promise<string> {
    const w = await this.writer(expected);
    try {
      await w.write(data);
      return await w.commit();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }

  /** Copies a file in (import of archives), verifying as it goes. */
  async putFile(source: string, expected: Expected = {}): Promise<string> {
    const w = await this.writer(expected);
    try {
      for await (const chunk of createReadStream(source)) await w.write(chunk as Buffer);
      return await w.commit();
    } catch (err) {
      await w.abort();
      throw err;
    }
  }
}

/**
 * One blob being written. `write` refuses to go past the expected size (a registry sending more
 * than it declared is cut off at once); `reset` starts over (a download restarted from byte 0);
 * `commit` checks size and digest and publishes; `abort` removes the temp file. `follow` lets a
 * consumer (the unpacker) read the bytes while they arrive, instead of after the download.
 */
export class BlobWriter {
  private hash: Hash = createHash('sha256');
  private written = 0;
  private done = false;
  private state: 'open' | 'committed' | 'aborted' = 'open';
  /** Where the bytes are once renamed (a follower may open the file after that). */
  private published: string | undefined;
  /** Bumped by `reset`: bytes a follower read before it may be rewritten. */
  private generation = 0;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly store: BlobStore,
    private readonly tmp: string,
    private readonly fh: FileHandle,
    private readonly expected: Expected,
  ) {}

  get bytesWritten(): number {
    return this.written;
  }

  private what(): string {
    return this.expected.what ?? `blob ${this.expected.digest ?? ''}`.trim();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.expected.size !== undefined && this.written + chunk.length > this.expected.size) {
      throw new CellError(
        ErrorCodes.DIGEST_MISMATCH,
        `${this.what()}: more than the declared ${this.expected.size} bytes arrived`,
        { expectedSize: this.expected.size },
      );
    }
    this.hash.update(chunk);
    let off = 0;
    while (off < chunk.length) {
      const { bytesWritten } = await this.fh.write(chunk, off, chunk.length - off, this.written + off);
      off += bytesWritten;
    }
    this.written += chunk.length;
    this.wake();
  }

  async reset(): Promise<void> {
    await this.fh.truncate(0);
    this.hash = createHash('sha256');
    this.written = 0;
    this.generation++;
    this.wake();
  }

  async commit(): Promise<string> {
    const actual = `sha256:${this.hash.digest('hex')}`;
    try {
      if (this.expected.size !== undefined && this.written !== this.expected.size) {
        throw new CellError(
          ErrorCodes.DIGEST_MISMATCH,
          `${this.what()}: got ${this.written} bytes, expected ${this.expected.size} (truncated?)`,
          { expectedSize: this.expected.size, actualSize: this.written },
        );
      }
      if (this.expected.digest !== undefined && actual !== this.expected.digest) {
        throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${this.what()}: content digest ${actual} does not match ${this.expected.digest}`, {
          expected: this.expected.digest,
          actual,
        });
      }
      await this.fh.sync();
      await this.fh.close();
      this.done = true;
      await rename(this.tmp, this.store.path(actual));
      this.published = this.store.path(actual);
      const dir = await open(this.store.dir, 'r');
      await dir.sync().finally(() => dir.close());
      this.state = 'committed';
      this.wake();
      return actual;
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async abort(): Promise<void> {
    if (this.state === 'open') this.state = 'aborted';
    this.wake();
    if (!this.done) {
      this.done = true;
      await this.fh.close().catch(() => undefined);
    }
    await rm(this.tmp, { force: true });
  }

  /**
   * The blob's bytes from the start, yielded as they are written; ends once the blob is committed
   * (size and digest checked). Until then the bytes are unverified: a consumer must not publish
   * anything made from them before the commit. Throws FollowInterrupted if the writer aborts, or
   * resets (a restarted download may send other bytes than those already read).
   */
  async *follow(chunkSize = 1024 * 1024): AsyncGenerator<Buffer> {
    const generation = this.generation;
    let fh: FileHandle | undefined;
    let pos = 0;
    try {
      for (;;) {
        if (this.generation !== generation) throw new FollowInterrupted(`${this.what()}: the download restarted from the beginning`);
        if (this.state === 'aborted') throw new FollowInterrupted(`${this.what()}: the download failed`);
        if (pos < this.written) {
          fh ??= await this.openForRead();
          const buf = Buffer.allocUnsafe(Math.min(chunkSize, this.written - pos));
          const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
          if (bytesRead === 0) throw new FollowInterrupted(`${this.what()}: the blob file shrank while being read`);
          pos += bytesRead;
          yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
        } else if (this.state === 'committed') {
          return;
        } else {
          await new Promise<void>((resolve) => this.waiters.push(resolve));
        }
      }
    } finally {
      await fh?.close();
    }
  }

  /** The temp file, or the published blob once the commit renamed it. */
  private async openForRead(): Promise<FileHandle> {
    try {
      return await open(this.tmp, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!this.published) throw new FollowInterrupted(`${this.what()}: the download failed`);
      return open(this.published, 'r');
    }
  }
}

/** A follower of a blob being written lost its footing: the caller should read the blob afresh. */
export class FollowInterrupted extends CellError {
  constructor(message: string) {
    super(ErrorCodes.REGISTRY_ERROR, message);
    this.name = 'FollowInterrupted';
  }
}
