import type { CopyResult, GuestFileStat } from '../api/files.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { isNotFound } from './errors.js';
import type { CopyOutOptions, FileData, FileReadOptions, FilesClient, FileStatOptions, FileWriteOptions } from './files.js';
import type { RequestOptions } from './options.js';
import type { VmsClient } from './vms.js';

/** One entry of a directory listing. */
export interface FileEntry extends GuestFileStat {
  name: string;
  /** Absolute guest path. */
  path: string;
}

export interface MkdirOptions extends RequestOptions {
  /** Also create missing parents, and accept an existing directory (default true). */
  parents?: boolean;
}

/**
 * Files in one sandbox. Guest paths are absolute; host paths are resolved against this process's
 * working directory. list, mkdir and remove have no route of their own: they run `find`, `mkdir`
 * and `rm` in the guest with the path as an argument of their own (never through a shell).
 *
 *   await box.files.write('/app/config.json', JSON.stringify(config));
 *   const text = (await box.files.read('/app/out.txt')).toString();
 *   await box.files.upload('./src', '/app/src');
 */
export class SandboxFiles {
  constructor(
    private readonly files: FilesClient,
    private readonly vms: VmsClient,
    private readonly vmId: () => string,
  ) {}

  /** Creates or atomically replaces a file (parents are created; mode 0644 and owner root by default). */
  write(path: string, data: FileData, opts: FileWriteOptions = {}): Promise<void> {
    return this.files.write(this.vmId(), path, data, opts);
  }

  /** A file's bytes; one over `maxBytes` is a `size_limit` error. */
  read(path: string, opts: FileReadOptions = {}): Promise<Buffer> {
    return this.files.read(this.vmId(), path, opts);
  }

  /** A file's bytes as they arrive. */
  readStream(path: string, opts: FileReadOptions = {}): AsyncGenerator<Buffer> {
    return this.files.readStream(this.vmId(), path, opts);
  }

  /** lstat (stat with `follow`); a missing path is a `not_found` error. */
  stat(path: string, opts: FileStatOptions = {}): Promise<GuestFileStat> {
    return this.files.stat(this.vmId(), path, opts);
  }

  /** Whether something (a file, directory, symlink, ...) is at `path`. */
  async exists(path: string, opts: RequestOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, opts);
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** The entries of a directory (not recursive, unsorted), each with its lstat. */
  async list(path: string, opts: RequestOptions = {}): Promise<FileEntry[]> {
    absolute(path);
    const dir = await this.stat(path, { ...opts, follow: true });
    if (dir.kind !== 'directory') throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path} is a ${dir.kind}, not a directory`);
    // NUL-separated, so any file name survives; the path is absolute, so find cannot take it for an option.
    const out = await this.guest(['find', path, '-mindepth', '1', '-maxdepth', '1', '-print0'], `list ${path}`, opts);
    const paths = out.split('\0').filter(Boolean);
    return Promise.all(
      paths.map(async (entry) => ({ ...(await this.stat(entry, opts)), name: entry.slice(entry.lastIndexOf('/') + 1), path: entry })),
    );
  }

  /** Creates a directory (with its parents by default). */
  async mkdir(path: string, opts: MkdirOptions = {}): Promise<void> {
    absolute(path);
    await this.guest(['mkdir', ...(opts.parents === false ? [] : ['-p']), '--', path], `create ${path}`, opts);
  }

  /** Removes a file or a directory with everything in it; a missing path is fine. */
  async remove(path: string, opts: RequestOptions = {}): Promise<void> {
    absolute(path);
    if (path.replace(/\/+$/, '') === '') throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'refusing to remove the guest\'s root directory');
    await this.guest(['rm', '-rf', '--', path], `remove ${path}`, opts);
  }

  /** A host file or directory into the VM, like `cell cp HOST VM:PATH`. */
  upload(hostPath: string, guestPath: string, opts: RequestOptions = {}): Promise<CopyResult> {
    return this.files.copyIn(this.vmId(), hostPath, guestPath, opts);
  }

  /** A file or directory of the VM onto the host, like `cell cp VM:PATH HOST`. */
  download(guestPath: string, hostPath: string, opts: CopyOutOptions = {}): Promise<CopyResult> {
    return this.files.copyOut(this.vmId(), guestPath, hostPath, opts);
  }

  /** Runs argv in the guest; its stdout, or an error with its stderr when it fails. */
  private async guest(argv: string[], what: string, opts: RequestOptions): Promise<string> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const result = await this.vms.exec(this.vmId(), { cmd: argv }, { ...opts, onStdout: (c) => void out.push(c), onStderr: (c) => void err.push(c) });
    if (result.exitCode !== 0) {
      const message = Buffer.concat(err).toString('utf8').trim().split('\n')[0] || `exit code ${result.exitCode}`;
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot ${what}: ${message}`, { exitCode: result.exitCode });
    }
    return Buffer.concat(out).toString('utf8');
  }
}

function absolute(path: string): void {
  if (!path.startsWith('/')) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `guest paths are absolute: ${path}`);
}
