import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { ByteSource } from '../unpack/byte-source.js';
import { openTarStream } from '../unpack/decompress.js';
import { entryComponents } from '../unpack/safe-path.js';
import { readTar } from '../unpack/tar-reader.js';
import { ArchiveBudget, MAX_IMAGE_ARCHIVE_ENTRIES, type ArchiveLimits } from './archive-budget.js';
import { scanArchive } from './scan-archive.js';

/**
 * Unpacks an image archive (docker save or OCI layout, optionally gzip/zstd compressed) into a
 * work dir, keeping only regular files and remembering symlinks by name (docker save links
 * repeated layers); `ExtractedArchive.path` resolves a name through them without ever leaving
 * the work dir. Files only, no modes or owners: the contents are blobs, not a root file system.
 * Entries and member bytes are capped (archive-budget.ts), by a pass over the headers before
 * anything is written and again while unpacking.
 */
export interface ExtractedArchive {
  dir: string;
  /** The work dir path of an archive member, or undefined if there is none. */
  path(name: string): string | undefined;
  has(name: string): boolean;
}

const MAX_LINK_HOPS = 16;

export async function extractArchive(
  file: string,
  parentDir: string,
  what = `archive ${file}`,
  limits: ArchiveLimits = { maxEntries: MAX_IMAGE_ARCHIVE_ENTRIES },
): Promise<ExtractedArchive> {
  await mkdir(parentDir, { recursive: true });
  // Headers first: an archive over its caps is refused before a single member is written.
  await scanArchive(file, what, await ArchiveBudget.open(what, parentDir, limits));
  // Checked again while unpacking, in case the file changed in between.
  const budget = await ArchiveBudget.open(what, parentDir, limits);
  const dir = await mkdtemp(join(parentDir, 'import-'));
  const index = new Map<string, string>();
  let counter = 0;
  const links = new Map<string, string>();
  const stream = await openTarStream(file, what);
  const source = new ByteSource(stream.bytes, what);
  try {
    for await (const entry of readTar(source, what)) {
      budget.entry();
      const parts = entryComponents(entry.header.path, what);
      if (parts.length === 0) continue;
      const name = parts.join('/');
      if (entry.header.type === 'symlink') {
        links.set(name, posix.normalize(posix.join(posix.dirname(name), entry.header.linkpath)));
      } else if (entry.header.type === 'hardlink') {
        links.set(name, entryComponents(entry.header.linkpath, what, entry.header.path).join('/'));
      } else if (entry.header.type === 'file') {
        budget.take(entry.header.size, name);
        // Members are stored flat under a numbered name: no directory tree to make or escape.
        const target = join(dir, String(counter++));
        const fh = await open(target, 'wx', 0o600);
        try {
          let pos = 0;
          for await (const chunk of entry.body()) {
            await fh.write(chunk, 0, chunk.length, pos);
            pos += chunk.length;
          }
        } finally {
          await fh.close();
        }
        index.set(name, target);
      }
    }
    await source.drain();
    await stream.finished();
  } catch (err) {
    stream.destroy();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const resolve = (name: string): string | undefined => {
    let current = posix.normalize(name).replace(/^\/+/, '').replace(/^\.\//, '');
    for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
      const hit = index.get(current);
      if (hit) return hit;
      const next = links.get(current);
      if (!next) return undefined;
      if (next.startsWith('..')) throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: member ${name} links outside the archive`);
      current = next;
    }
    throw new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: member ${name} is a symlink loop`);
  };
  return { dir, path: resolve, has: (name) => resolve(name) !== undefined };
}
