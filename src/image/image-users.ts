import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';

const run = promisify(execFile);

/** Reads a file from an ext4 image without mounting it (debugfs, from e2fsprogs). */
async function readFromDisk(diskPath: string, path: string): Promise<string> {
  try {
    const { stdout } = await run('debugfs', ['-R', `cat ${path}`, diskPath], { maxBuffer: 8 * 1024 * 1024 });
    return stdout;
  } catch {
    return '';
  }
}

function lookup(db: string, name: string): string[] | undefined {
  return db
    .split('\n')
    .map((line) => line.split(':'))
    .find((fields) => fields[0] === name);
}

/**
 * Docker's `--user` forms: `name`, `uid`, `name:group`, `uid:gid` (and mixes). Names are looked up
 * in the image's own /etc/passwd and /etc/group, as Docker does, not the host's. Returns `uid:gid`.
 */
export async function resolveImageUser(diskPath: string, user: string): Promise<string> {
  if (!user || user === 'root') return '0:0';
  const [who, group] = user.split(':', 2) as [string, string | undefined];
  let uid: number;
  let gid: number | undefined;
  if (/^\d+$/.test(who)) {
    uid = Number(who);
  } else {
    const entry = lookup(await readFromDisk(diskPath, '/etc/passwd'), who);
    if (!entry || entry.length < 4) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `user "${who}" is not in the image's /etc/passwd`);
    uid = Number(entry[2]);
    gid = Number(entry[3]);
  }
  if (group !== undefined && group !== '') {
    if (/^\d+$/.test(group)) gid = Number(group);
    else {
      const entry = lookup(await readFromDisk(diskPath, '/etc/group'), group);
      if (!entry || entry.length < 3) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `group "${group}" is not in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  return `${uid}:${gid ?? uid}`;
}
