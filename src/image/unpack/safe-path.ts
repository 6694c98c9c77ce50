import { lstat, mkdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';

/**
 * Where a tar entry may land. Decisions (documented in docs of the unpacker):
 * - A leading `/` is dropped, as Docker and containerd do: `/etc/x` means the image's /etc/x.
 * - Any `..` component is refused, even one that would stay inside: no layer needs it.
 * - Directories on the way are followed through symlinks only when the link is relative and stays
 *   inside the root; an absolute link (`a -> /etc`) or one climbing out (`a -> ../../`) in the
 *   middle of a path is refused, so nothing is ever written outside the staging dir.
 */
const MAX_SYMLINK_HOPS = 40;
/** Linux's NAME_MAX and PATH_MAX: an entry beyond them could not be created (nor fit in ext4). */
export const MAX_NAME_BYTES = 255;
export const MAX_PATH_BYTES = 4095;

export function unsafe(entry: string, why: string, what: string): CellError {
  return new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: refusing entry "${entry}": ${why}`, { entry });
}

/** The entry's path as components inside the root; [] is the root itself. */
export function entryComponents(name: string, what: string, linkOf?: string): string[] {
  const entry = linkOf ?? name;
  const subject = linkOf ? `its hard link target "${name}"` : 'the path';
  if (name.includes('\0')) throw unsafe(entry, `${subject} contains a NUL byte`, what);
  if (Buffer.byteLength(name) > MAX_PATH_BYTES) throw unsafe(entry.slice(0, 200), `${subject} is longer than ${MAX_PATH_BYTES} bytes`, what);
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(entry, `${subject} has a ".." component`, what);
  if (parts.some((p) => Buffer.byteLength(p) > MAX_NAME_BYTES)) throw unsafe(entry, `${subject} has a component longer than ${MAX_NAME_BYTES} bytes`, what);
  return parts;
}

/**
 * Resolves a directory (given as components from the root) to a host path inside `root`,
 * following safe symlinks; with `create`, missing directories are made (mode 0755, as tar does).
 * Returns null when a component is missing and `create` is false. `knownDirs` caches image paths
 * already found to be real directories (the caller clears it after removing anything).
 */
export async function resolveDir(
  root: string,
  components: readonly string[],
  opts: { create: boolean; entry: string; what: string; knownDirs: Set<string> },
): Promise<{ hostPath: string; imagePath: string } | null> {
  let done: string[] = [];
  let todo = [...components];
  let hops = 0;
  while (todo.length > 0) {
    const name = todo.shift()!;
    const imagePath = [...done, name].join('/');
    if (opts.knownDirs.has(imagePath)) {
      done.push(name);
      continue;
    }
    const hostPath = join(root, imagePath);
    let st;
    try {
      st = await lstat(hostPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!opts.create) return null;
      await mkdir(hostPath, { mode: 0o755 });
      opts.knownDirs.add(imagePath);
      done.push(name);
      continue;
    }
    if (st.isDirectory()) {
      opts.knownDirs.add(imagePath);
      done.push(name);
      continue;
    }
    if (!st.isSymbolicLink()) throw unsafe(opts.entry, `/${imagePath} is not a directory`, opts.what);
    if (++hops > MAX_SYMLINK_HOPS) throw unsafe(opts.entry, `too many symlinks on the way (a loop at /${imagePath}?)`, opts.what);
    const target = await readlink(hostPath);
    if (target.startsWith('/')) {
      throw unsafe(opts.entry, `it would be written through symlink /${imagePath} -> ${target}, which points outside the image root`, opts.what);
    }
    const resolved = [...done];
    for (const part of target.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (resolved.length === 0) {
          throw unsafe(opts.entry, `it would be written through symlink /${imagePath} -> ${target}, which climbs out of the image root`, opts.what);
        }
        resolved.pop();
      } else resolved.push(part);
    }
    done = [];
    todo = [...resolved, ...todo];
  }
  const imagePath = done.join('/');
  return { hostPath: imagePath ? join(root, imagePath) : root, imagePath };
}
