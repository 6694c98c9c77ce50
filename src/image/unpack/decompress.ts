import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { toolPath } from '../run-tool.js';

/**
 * Opens a layer blob as a stream of tar bytes. The compression is read from the first bytes, not
 * trusted from the media type (registries and tools mislabel layers). zstd goes through the
 * host's `zstd` binary (Debian package zstd): Node 20's zlib has no zstd, the native tool is
 * several times faster than a pure-JS decoder on large layers, and it streams, so memory stays flat.
 */
export type Compression = 'gzip' | 'zstd' | 'none';

const GZIP = Buffer.from([0x1f, 0x8b]);
const ZSTD = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
const XZ = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const BZIP2 = Buffer.from('BZh');

export async function detectCompression(path: string, what: string): Promise<Compression> {
  const fh = await open(path, 'r');
  let head: Buffer;
  try {
    head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, 6, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
  return compressionOf(head, what);
}

function compressionOf(head: Buffer, what: string): Compression {
  if (head.subarray(0, 2).equals(GZIP)) return 'gzip';
  if (head.subarray(0, 4).equals(ZSTD)) return 'zstd';
  if (head.subarray(0, 6).equals(XZ) || head.subarray(0, 3).equals(BZIP2)) {
    throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `${what}: xz and bzip2 compressed layers are not supported (only gzip, zstd, plain tar)`);
  }
  return 'none';
}

export interface TarStream {
  bytes: AsyncIterable<Buffer>;
  /** Resolves once the decompressor finished cleanly; rejects with its error. */
  finished: () => Promise<void>;
  /** Stops early (the consumer failed). */
  destroy: () => void;
}

/**
 * `input` is a blob file, or the bytes of one as they arrive (BlobWriter.follow): decompressing
 * while the download runs means the unpack need not wait for the whole layer.
 */
export async function openTarStream(input: string | AsyncIterable<Buffer>, what: string): Promise<TarStream> {
  const raw = typeof input === 'string' ? createReadStream(input, { highWaterMark: 1024 * 1024 }) : input;
  const { head, rest } = await peek(raw, 6);
  const compression = compressionOf(head, what);
  const source = Readable.from(rest, { objectMode: false });
  if (compression === 'none') {
    return { bytes: source, finished: async () => undefined, destroy: () => source.destroy() };
  }
  if (compression === 'gzip') {
    const gunzip = createGunzip({ chunkSize: 256 * 1024 });
    source.on('error', (e) => gunzip.destroy(e));
    source.pipe(gunzip);
    const wrapped = wrapErrors(gunzip, what, 'gzip');
    return { bytes: wrapped, finished: async () => undefined, destroy: () => (source.destroy(), gunzip.destroy()) };
  }
  return zstdStream(source, what);
}

/** The first `n` bytes (fewer at a short end) and the whole stream again, head included. */
async function peek(input: AsyncIterable<Buffer>, n: number): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> }> {
  const it = input[Symbol.asyncIterator]();
  const first: Buffer[] = [];
  let have = 0;
  let ended = false;
  while (have < n) {
    const next = await it.next();
    if (next.done) {
      ended = true;
      break;
    }
    first.push(next.value);
    have += next.value.length;
  }
  async function* rest(): AsyncGenerator<Buffer> {
    try {
      yield* first;
      if (ended) return;
      for (let next = await it.next(); !next.done; next = await it.next()) yield next.value;
    } finally {
      await it.return?.();
    }
  }
  return { head: Buffer.concat(first).subarray(0, n), rest: rest() };
}

async function* wrapErrors(stream: Readable, what: string, kind: string): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of stream) yield chunk as Buffer;
  } catch (err) {
    if (err instanceof CellError) throw err;
    throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: ${kind} data is corrupt: ${(err as Error).message}`, undefined, { cause: err });
  }
}

function zstdStream(source: Readable, what: string): TarStream {
  const child = spawn('zstd', ['-d', '-c', '-q', '--no-progress'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, PATH: toolPath() },
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    if (stderr.length < 2000) stderr += c.toString('utf8');
  });
  // A failing source (a download that broke) is the error to report, not zstd's reaction to it.
  let sourceError: unknown;
  source.on('error', (e) => {
    sourceError = e;
    child.kill('SIGKILL');
  });
  child.stdin.on('error', () => undefined);
  source.pipe(child.stdin);
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'ENOENT'
          ? new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `${what} is zstd-compressed and the zstd command is missing (apt-get install zstd)`)
          : e,
      ),
    );
    child.on('close', (code, signal) => {
      if (sourceError) reject(sourceError);
      else if (code === 0) resolve();
      else reject(new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: zstd data is corrupt (zstd ${signal ?? `exited ${code}`}: ${stderr.trim()})`));
    });
  });
  exited.catch(() => undefined);
  async function* bytes(): AsyncGenerator<Buffer> {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    await exited;
  }
  return {
    bytes: bytes(),
    finished: () => exited,
    destroy: () => {
      source.destroy();
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}
