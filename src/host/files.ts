import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, createReadStream, fdatasync } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * File helpers for the content-addressed cache. Everything the cache holds is built in a temp
 * path on the same filesystem, fsynced, then renamed into place: a reader sees either nothing or
 * a complete output, and a crash or failure mid-step leaves only a temp path behind (removed by
 * the next set-up, see setup.ts).
 */

export function sha256Hex(...parts: (Buffer | string)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

export { fsyncPath, writeFileAtomic } from '../store/atomic-file.js';
import { fsyncPath } from '../store/atomic-file.js';
import { createPrivateFile, ensureNotWritableByOthers } from '../store/private-files.js';

/**
 * Copies a sparse file keeping its holes (a RAM file holds only the pages the guest touched) into
 * a new 0600 file. `to` is created exclusively here, whatever was there removed first and never
 * followed (a symlink planted at a RAM file's path must not redirect a guest's RAM onto
 * /etc/passwd); cp writes through our descriptor (/dev/fd/3), so the path is not looked up again.
 * The copy is on disk when this resolves.
 */
export async function copySparse(from: string, to: string): Promise<void> {
  const fd = createPrivateFile(to);
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn('cp', ['--sparse=always', from, '/dev/fd/3'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
      let stderr = '';
      child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`cp --sparse=always ${from} ${to} exited ${code}: ${stderr.trim()}`))));
    });
    // On disk before anything says the copy is complete (a snapshot's `saved` marker); free on tmpfs.
    await new Promise<void>((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));
  } catch (err) {
    await rm(to, { force: true });
    throw err;
  } finally {
    closeSync(fd);
  }
}

/** Moves a finished temp file into place (it must already be fsynced) and makes the rename durable. */
export async function publishFile(tmpPath: string, finalPath: string, mode?: number): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  if (mode !== undefined) await chmod(tmpPath, mode);
  await rename(tmpPath, finalPath);
  await fsyncPath(dirname(finalPath));
}

/**
 * Moves a finished temp directory into place. When `finalDir` already exists (another process
 * published the same content first, or an outdated build of the same name), `replace` decides:
 * false keeps the existing one and discards ours; true swaps ours in and removes the old one.
 */
export async function publishDir(tmpDir: string, finalDir: string, replace = false): Promise<void> {
  await fsyncPath(tmpDir);
  await mkdir(dirname(finalDir), { recursive: true });
  try {
    await rename(tmpDir, finalDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    if (!replace) {
      await rm(tmpDir, { recursive: true, force: true });
      return;
    }
    const old = `${tmpDir}.old`;
    await rename(finalDir, old);
    await rename(tmpDir, finalDir);
    await rm(old, { recursive: true, force: true });
  }
  await fsyncPath(dirname(finalDir));
}

/**
 * A fresh private (0700) work dir under `<cacheDir>/tmp` (same filesystem as the outputs, so renames
 * work). Root unpacks and runs what is built there: the cache and its tmp must not be writable by
 * anyone else, or they could swap our work dir for theirs.
 */
export async function makeWorkDir(cacheDir: string, label: string): Promise<string> {
  const parent = join(cacheDir, 'tmp');
  await mkdir(parent, { recursive: true });
  ensureNotWritableByOthers(cacheDir, 'the host cache');
  ensureNotWritableByOthers(parent, 'the host cache');
  const dir = await mkdtemp(join(parent, `${label}-`));
  await chmod(dir, 0o700);
  return dir;
}

export async function readJsonIfExists<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || err instanceof SyntaxError) return null;
    throw err;
  }
}

/** Writes a file and fsyncs it (for files inside a temp dir that publishDir will move). */
export async function writeFileSynced(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
  const fh = await open(path, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** One stat: whether `path` is a regular file (the fast paths' check that an output still exists). */
export async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Bytes a file really occupies (sparse RAM files are mostly holes). */
export async function allocatedBytes(path: string): Promise<number> {
  try {
    const s = await stat(path);
    return Math.min(s.size, s.blocks * 512);
  } catch {
    return 0;
  }
}
