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

export async function openTarStream(path: string, what: string): Promise<TarStream> {
  const compression = await detectCompression(path, what);
  if (compression === 'none') {
    const s = createReadStream(path, { highWaterMark: 1024 * 1024 });
    return { bytes: s, finished: async () => undefined, destroy: () => s.destroy() };
  }
  if (compression === 'gzip') {
    const gunzip = createGunzip({ chunkSize: 256 * 1024 });
    const file = createReadStream(path, { highWaterMark: 1024 * 1024 });
    file.on('error', (e) => gunzip.destroy(e));
    file.pipe(gunzip);
    const wrapped = wrapErrors(gunzip, what, 'gzip');
    return { bytes: wrapped, finished: async () => undefined, destroy: () => (file.destroy(), gunzip.destroy()) };
  }
  return zstdStream(path, what);
}

async function* wrapErrors(stream: Readable, what: string, kind: string): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of stream) yield chunk as Buffer;
  } catch (err) {
    if (err instanceof CellError) throw err;
    throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: ${kind} data is corrupt: ${(err as Error).message}`, undefined, { cause: err });
  }
}

function zstdStream(path: string, what: string): TarStream {
  const child = spawn('zstd', ['-d', '-c', '-q', '--no-progress', '--', path], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PATH: toolPath() },
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    if (stderr.length < 2000) stderr += c.toString('utf8');
  });
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'ENOENT'
          ? new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `${what} is zstd-compressed and the zstd command is missing (apt-get install zstd)`)
          : e,
      ),
    );
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
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
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}
