/**
 * Host paths a caller names (copy in and out, build and template files, image and snapshot
 * archives) are reached through a HostFs: with the caller's own file access, not celld's.
 *
 * celld runs as root, so without this any member of the `cell` group could have it read
 * /etc/shadow into a VM or write over /etc/passwd with a copy-out. When the caller is someone else,
 * every path lookup runs on celld's main thread with that thread's file-system credentials set to
 * the caller's (native/host-creds.c: fsuid, fsgid and groups, the thread alone), synchronously; the
 * bytes then move through descriptors opened that way. Files a copy-out creates belong to the
 * caller, as if they had written them. CELLD_HOST_FS is celld's own access (a root caller, a
 * celld that is not root, celld's own work).
 */
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Caller } from './callers.js';
import { hostCreds } from '../host/host-creds.js';
import type { HostFolderMount } from '../domain/volume.js';

/** A file opened through a HostFs. `path` names the open file itself (for tools celld runs). */
export interface HostFile {
  readonly fd: number;
  /** `/proc/<celld>/fd/<fd>`: opening it reaches this very file, whatever its name now leads to. */
  readonly path: string;
  /** A stream of its bytes that takes the descriptor over (closing the file is then the stream's job). */
  readStream(opts?: { highWaterMark?: number }): fs.ReadStream;
  write(data: Uint8Array): Promise<void>;
  /** Metadata, with the same access the file was opened with. */
  chmod(mode: number): Promise<void>;
  utimes(atime: Date, mtime: Date): Promise<void>;
  chown(uid: number, gid: number): Promise<void>;
  close(): Promise<void>;
}

/** A user's credentials on this host (as a host folder records who shares it). */
export type HostIdentity = HostFolderMount['owner'];

export interface HostFs {
  /** Whose access this is, for messages: "celld" or "uid 1000". */
  readonly who: string;
  /** The same, as credentials: what a process started for this caller runs with (a host folder's virtiofsd). */
  readonly identity: HostIdentity;
  lstat(path: string): Promise<fs.Stats>;
  stat(path: string): Promise<fs.Stats>;
  readdir(path: string): Promise<string[]>;
  readlink(path: string): Promise<string>;
  realpath(path: string): Promise<string>;
  readFile(path: string): Promise<Buffer>;
  mkdir(path: string, mode: number): Promise<void>;
  symlink(target: string, path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  rm(path: string): Promise<void>;
  chmod(path: string, mode: number): Promise<void>;
  lchown(path: string, uid: number, gid: number): Promise<void>;
  utimes(path: string, atime: Date, mtime: Date): Promise<void>;
  /** Opens for reading; the file's bytes are then read with `createReadStream(file.path)` or by a tool. */
  openRead(path: string): Promise<HostFile>;
  /** Creates a new file (never through an existing name or link). */
  create(path: string, mode: number): Promise<HostFile>;
}

const write = promisify(fs.write);
/** What readFile reads at most (build and template files). */
const MAX_READ_FILE = 4 * 1024 * 1024;
const close = promisify(fs.close);

/**
 * A HostFs that runs every call through `as` (which sets and restores credentials around a
 * synchronous call). Calls resolve on a later tick, so a long tree walk still lets other requests in.
 */
class CredentialedHostFs implements HostFs {
  constructor(
    readonly who: string,
    readonly identity: HostIdentity,
    private readonly as: <T>(fn: () => T) => T,
  ) {}

  private call<T>(fn: () => T): Promise<T> {
    return new Promise((resolve, reject) => {
      setImmediate(() => {
        try {
          resolve(this.as(fn));
        } catch (err) {
          reject(err);
        }
      });
    });
  }

  lstat = (path: string) => this.call(() => fs.lstatSync(path));
  stat = (path: string) => this.call(() => fs.statSync(path));
  readdir = (path: string) => this.call(() => fs.readdirSync(path));
  readlink = (path: string) => this.call(() => fs.readlinkSync(path));
  realpath = (path: string) => this.call(() => fs.realpathSync(path));
  // Not readFileSync: a FIFO would block celld's main thread in open() or read() for good, and
  // /dev/zero would fill its memory. A regular file, at most MAX_READ_FILE bytes.
  readFile = (path: string) =>
    this.call(() => {
      const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      try {
        if (!fs.fstatSync(fd).isFile()) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path} (host) is not a regular file`);
        const buf = Buffer.allocUnsafe(MAX_READ_FILE + 1);
        let n = 0;
        for (let got = -1; got !== 0 && n < buf.length; n += got) got = fs.readSync(fd, buf, n, buf.length - n, null);
        if (n > MAX_READ_FILE) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path} (host) is larger than ${MAX_READ_FILE} bytes`);
        return Buffer.from(buf.subarray(0, n));
      } finally {
        fs.closeSync(fd);
      }
    });
  mkdir = (path: string, mode: number) => this.call(() => void fs.mkdirSync(path, { mode }));
  symlink = (target: string, path: string) => this.call(() => fs.symlinkSync(target, path));
  rename = (from: string, to: string) => this.call(() => fs.renameSync(from, to));
  rm = (path: string) => this.call(() => fs.rmSync(path, { recursive: true, force: true }));
  chmod = (path: string, mode: number) => this.call(() => fs.chmodSync(path, mode));
  lchown = (path: string, uid: number, gid: number) => this.call(() => fs.lchownSync(path, uid, gid));
  utimes = (path: string, atime: Date, mtime: Date) => this.call(() => fs.utimesSync(path, atime, mtime));
  // O_NONBLOCK: a FIFO swapped in for a file must not hang celld's main thread in open().
  openRead = (path: string) =>
    this.call(() => {
      const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      if (!fs.fstatSync(fd).isFile()) {
        fs.closeSync(fd);
        throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path} (host) is not a regular file`);
      }
      return this.file(fd);
    });
  create = (path: string, mode: number) =>
    this.call(() => this.file(fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, mode)));

  private file(fd: number): HostFile {
    let closed = false;
    return {
      fd,
      path: join('/proc', String(process.pid), 'fd', String(fd)),
      readStream: (opts = {}) => {
        closed = true;
        return fs.createReadStream('', { ...opts, fd, autoClose: true });
      },
      write: async (data) => {
        for (let done = 0; done < data.length; ) done += (await write(fd, data, done, data.length - done, null)).bytesWritten;
      },
      chmod: (mode) => this.call(() => fs.fchmodSync(fd, mode)),
      utimes: (atime, mtime) => this.call(() => fs.futimesSync(fd, atime, mtime)),
      chown: (uid, gid) => this.call(() => fs.fchownSync(fd, uid, gid)),
      close: async () => {
        if (closed) return;
        closed = true;
        await close(fd);
      },
    };
  }
}

/** celld's own access. */
export const CELLD_HOST_FS: HostFs = new CredentialedHostFs(
  'celld',
  { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, groups: process.getgroups?.() ?? [] },
  (fn) => fn(),
);

/**
 * The HostFs for a caller: celld's own for root, for celld's own user, and for any caller when
 * celld is not root (it could not take another user's credentials; its socket lets in its own user
 * and, when asked, one group: docs/security.md); otherwise the caller's, through host-creds.
 */
export function hostFsFor(caller: Caller | null): HostFs {
  const self = process.getuid?.() ?? 0;
  if (!caller || caller.uid === 0 || caller.uid === self || self !== 0) return CELLD_HOST_FS;
  const creds = hostCreds();
  if (!creds) {
    throw new CellError(ErrorCodes.PERMISSION_DENIED, `celld cannot act with uid ${caller.uid}'s file access (its host-creds addon is missing: run npm run build)`);
  }
  return new CredentialedHostFs(`uid ${caller.uid}`, { uid: caller.uid, gid: caller.gid, groups: caller.groups }, (fn) => creds.withFsCredentials(caller.uid, caller.gid, caller.groups, fn));
}

/**
 * Writes a new host file the way a caller's own program would: `write` fills a file the caller
 * created beside `file` (given its /proc path, so tools celld runs can write it too), which is
 * then flushed and renamed over `file`. A failure leaves nothing behind.
 */
export async function writeHostFile<T>(host: HostFs, file: string, write: (path: string) => Promise<T>): Promise<T> {
  const temp = join(dirname(file), `.${basename(file)}.cell-${randomBytes(6).toString('hex')}`);
  const out = await host.create(temp, 0o644).catch(hostPathError(file));
  try {
    const result = await write(out.path);
    await promisify(fs.fsync)(out.fd);
    await host.rename(temp, file).catch(hostPathError(file));
    return result;
  } catch (err) {
    await host.rm(temp).catch(() => {});
    throw err;
  } finally {
    await out.close();
  }
}

/** A host file system error as a CellError that names the path (and no errno jargon for the usual ones). */
export function hostPathError(path: string) {
  return (err: unknown): never => {
    if (err instanceof CellError) throw err;
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === 'ENOENT' ? 'no such file or directory' : e.code === 'EACCES' || e.code === 'EPERM' ? 'permission denied' : e.code === 'ENOSPC' ? 'no space left on the device' : e.message;
    const code =
      e.code === 'ENOENT'
        ? ErrorCodes.NOT_FOUND
        : e.code === 'EACCES' || e.code === 'EPERM'
          ? ErrorCodes.PERMISSION_DENIED
          : e.code === 'ENOTDIR' || e.code === 'EISDIR' || e.code === 'EEXIST' || e.code === 'ELOOP'
            ? ErrorCodes.INVALID_ARGUMENT
            : ErrorCodes.INTERNAL;
    throw new CellError(code, `${path} (host): ${why}`, undefined, { cause: err });
  };
}
