import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * A content hash of a host file or directory tree: names, types, permission bits, file contents
 * and symlink targets, in sorted order. Times and owners are left out (copies into a guest are
 * owned by root and the cache should hit on a fresh checkout of the same files).
 */
export async function treeHash(root: string): Promise<string> {
  const hash = createHash('sha256');
  let info;
  try {
    info = await lstat(root);
  } catch {
    throw new CellError(ErrorCodes.NOT_FOUND, `no such file or directory: ${root}`);
  }
  await hashEntry(hash, root, '.', info);
  return hash.digest('hex');
}

async function hashEntry(hash: Hash, path: string, rel: string, info: Awaited<ReturnType<typeof lstat>>): Promise<void> {
  const mode = Number(info.mode) & 0o7777;
  if (info.isDirectory()) {
    hash.update(`d ${mode.toString(8)} ${JSON.stringify(rel)}\n`);
    const names = (await readdir(path)).sort();
    for (const name of names) {
      const child = join(path, name);
      await hashEntry(hash, child, rel === '.' ? name : `${rel}/${name}`, await lstat(child));
    }
  } else if (info.isFile()) {
    hash.update(`f ${mode.toString(8)} ${info.size} ${JSON.stringify(rel)}\n`);
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    hash.update('\n');
  } else if (info.isSymbolicLink()) {
    hash.update(`l ${JSON.stringify(rel)} ${JSON.stringify(await readlink(path))}\n`);
  } else {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot copy ${path} into a VM: only files, directories and symlinks can be copied`);
  }
}
