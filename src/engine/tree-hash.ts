import { createHash, type Hash } from 'node:crypto';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { CELLD_HOST_FS, hostPathError, type HostFs } from './host-fs.js';

/**
 * A content hash of a host file or directory tree: names, types, permission bits, file contents
 * and symlink targets, in sorted order. Times and owners are left out (copies into a guest are
 * owned by root and the cache should hit on a fresh checkout of the same files).
 */
export async function treeHash(root: string, host: HostFs = CELLD_HOST_FS): Promise<string> {
  const hash = createHash('sha256');
  let info;
  try {
    info = await host.lstat(root);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CellError(ErrorCodes.NOT_FOUND, `no such file or directory: ${root}`);
    return hostPathError(root)(err);
  }
  await hashEntry(host, hash, root, '.', info);
  return hash.digest('hex');
}

async function hashEntry(host: HostFs, hash: Hash, path: string, rel: string, info: Stats): Promise<void> {
  const mode = Number(info.mode) & 0o7777;
  if (info.isDirectory()) {
    hash.update(`d ${mode.toString(8)} ${JSON.stringify(rel)}\n`);
    const names = (await host.readdir(path).catch(hostPathError(path))).sort();
    for (const name of names) {
      const child = join(path, name);
      await hashEntry(host, hash, child, rel === '.' ? name : `${rel}/${name}`, await host.lstat(child).catch(hostPathError(child)));
    }
  } else if (info.isFile()) {
    hash.update(`f ${mode.toString(8)} ${info.size} ${JSON.stringify(rel)}\n`);
    const file = await host.openRead(path).catch(hostPathError(path));
    for await (const chunk of file.readStream()) hash.update(chunk as Buffer);
    hash.update('\n');
  } else if (info.isSymbolicLink()) {
    hash.update(`l ${JSON.stringify(rel)} ${JSON.stringify(await host.readlink(path).catch(hostPathError(path)))}\n`);
  } else {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot copy ${path} into a VM: only files, directories and symlinks can be copied`);
  }
}
