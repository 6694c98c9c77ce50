import { resolve as resolveHostPath } from 'node:path';
import { Api } from '../api/routes.js';
import type { CopyResult, GuestFileStat } from '../api/files.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { files } = Api;

export interface FileStatOptions extends RequestOptions {
  /** stat instead of lstat: a symlink answers for its target. */
  follow?: boolean;
}
export interface FileReadOptions extends RequestOptions {
  /** A larger file is a `size_limit` error (checked before anything is sent). */
  maxBytes?: number;
}
export interface FileWriteOptions extends RequestOptions {
  /** Default 0644. */
  mode?: number;
  /** Owner (default root). */
  uid?: number;
  gid?: number;
}
export interface CopyOutOptions extends RequestOptions {
  /** Owner to give the copied files (default: celld's user). */
  owner?: { uid: number; gid: number };
}

/** What a file write takes: its whole content, or its bytes as they come. */
export type FileData = string | Uint8Array | AsyncIterable<Buffer | string>;

/**
 * Files of a running VM, by VM reference. Guest paths are absolute; host paths (copyIn/copyOut)
 * are resolved against this process's working directory, and celld, on the same host, reads or
 * writes them.
 */
export class FilesClient {
  constructor(private readonly transport: Transport) {}

  /** lstat (stat with `follow`); a missing path is a `not_found` error. */
  stat(ref: string, path: string, opts: FileStatOptions = {}): Promise<GuestFileStat> {
    return this.transport.call(files.stat, { params: { ref }, query: { path, follow: opts.follow } }, opts);
  }

  /** A guest file's bytes as they arrive. Leaving the loop early (or aborting) cancels the read. */
  async *readStream(ref: string, path: string, opts: FileReadOptions = {}): AsyncGenerator<Buffer> {
    for await (const event of this.transport.stream(files.read, { params: { ref }, query: { path, maxBytes: opts.maxBytes } }, opts)) {
      if (event.type === 'data') yield Buffer.from(event.data, 'base64');
    }
  }

  /** A guest file, whole. */
  async read(ref: string, path: string, opts: FileReadOptions = {}): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of this.readStream(ref, path, opts)) chunks.push(chunk);
    return Buffer.concat(chunks);
  }

  /** Creates or atomically replaces a guest file (parents are created); mode defaults to 0644, owner root. */
  async write(ref: string, path: string, data: FileData, opts: FileWriteOptions = {}): Promise<void> {
    const body = typeof data === 'string' || data instanceof Uint8Array ? oneChunk(Buffer.from(data)) : data;
    await this.transport.upload(files.write, { params: { ref }, query: { path, mode: opts.mode, uid: opts.uid, gid: opts.gid } }, body, opts);
  }

  /** `cell cp HOST VM:PATH`: a host file or directory into the VM (docker cp's rules for the destination). */
  copyIn(ref: string, hostPath: string, guestPath: string, opts: RequestOptions = {}): Promise<CopyResult> {
    return this.transport.call(files.copyIn, { params: { ref }, body: { hostPath: hostPathOf(hostPath), guestPath } }, opts);
  }

  /** `cell cp VM:PATH HOST`: a file or directory of the VM onto the host, owned by `owner` when given. */
  copyOut(ref: string, guestPath: string, hostPath: string, opts: CopyOutOptions = {}): Promise<CopyResult> {
    return this.transport.call(files.copyOut, { params: { ref }, body: { guestPath, hostPath: hostPathOf(hostPath), ...opts.owner } }, opts);
  }
}

async function* oneChunk(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

/** An absolute host path; a trailing "/." (copy a directory's contents) survives resolving. */
function hostPathOf(path: string): string {
  const contents = path === '.' || path.endsWith('/.');
  const resolved = resolveHostPath(path);
  return contents ? `${resolved === '/' ? '' : resolved}/.` : resolved;
}
