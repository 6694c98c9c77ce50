import type { Command } from 'commander';
import { resolve } from 'node:path';
import type { CopyResult } from '../../sdk/index.js';
import { withClient } from '../action.js';
import { EXIT_FAILURE, reportError, UsageError } from '../errors.js';
import { bytes } from '../format.js';

/** One `cell cp` operand: `VM:PATH` names a path in a VM, anything else a host path. */
export interface CopyOperand {
  vm?: string;
  path: string;
}

export type CopyPlan =
  | { direction: 'in'; vm: string; hostPath: string; guestPath: string }
  | { direction: 'out'; vm: string; guestPath: string; hostPath: string };

/**
 * Like docker cp: `VM:PATH` when there is a ':' with no '/' before it, so a host path with a colon
 * is written `./a:b`. `box:` alone is the VM's `/`; a relative VM path is relative to its `/`.
 */
export function parseOperand(arg: string): CopyOperand {
  const colon = arg.indexOf(':');
  if (colon > 0 && !arg.slice(0, colon).includes('/')) {
    const path = arg.slice(colon + 1);
    return { vm: arg.slice(0, colon), path: path.startsWith('/') ? path : `/${path}` };
  }
  return { path: arg };
}

/** Which way to copy, with the host path made absolute (celld resolves nothing itself). Pure. */
export function planCopy(src: string, dest: string, cwd = process.cwd()): CopyPlan {
  for (const arg of [src, dest]) {
    if (arg === '-') throw new UsageError("cell cp does not read or write tar streams ('-'): give a host path");
    if (arg === '') throw new UsageError('an empty path is not a path');
  }
  const from = parseOperand(src);
  const to = parseOperand(dest);
  if (from.vm !== undefined && to.vm !== undefined) {
    throw new UsageError('copying from one VM to another is not supported: one of SRC and DEST must be a host path');
  }
  if (from.vm !== undefined) return { direction: 'out', vm: from.vm, guestPath: from.path, hostPath: absolute(to.path, cwd) };
  if (to.vm !== undefined) return { direction: 'in', vm: to.vm, hostPath: absolute(from.path, cwd), guestPath: to.path };
  throw new UsageError(`one of SRC and DEST must be in a VM, written VM:PATH (for example box:/tmp), not "${src}" and "${dest}"`);
}

/** An absolute path; a trailing '/' (into a directory) or '/.' (a directory's contents) is kept. */
function absolute(path: string, cwd: string): string {
  const suffix = path === '.' || path.endsWith('/.') ? '/.' : path.endsWith('/') ? '/' : '';
  const resolved = resolve(cwd, path);
  return resolved === '/' ? (suffix === '/.' ? '/.' : '/') : resolved + suffix;
}

/** "3 files, 2 directories, 1 symlink (12 KiB)". */
export function describeCopy(r: CopyResult): string {
  const n = (count: number, one: string, many: string) => `${count} ${count === 1 ? one : many}`;
  const parts = [n(r.files, 'file', 'files')];
  if (r.directories) parts.push(n(r.directories, 'directory', 'directories'));
  if (r.symlinks) parts.push(n(r.symlinks, 'symlink', 'symlinks'));
  return `${parts.join(', ')} (${bytes(r.bytes)})`;
}

export function register(program: Command): void {
  program
    .command('cp')
    .description('copy files or directories between a running VM and this host')
    .argument('<src>', 'VM:PATH or a host path')
    .argument('<dest>', 'VM:PATH or a host path (one of the two must be in a VM)')
    .addHelpText(
      'after',
      `
VM:PATH names a path in a running VM (by name, id or unique id prefix); anything else is a path on
this host ("./a:b" for a host path with a colon). As with docker cp:
  - a DEST that is an existing directory, or ends with '/', receives SRC inside it;
  - otherwise DEST becomes the copy (a file there is replaced, atomically);
  - SRC ending in '/.' copies a directory's contents instead of the directory.
Directories are copied recursively with their files' modes, mtimes and symlinks. Into a VM, files
are owned by root; onto the host, by you (set-user-ID bits dropped), and a failed copy leaves
nothing behind. Sockets, FIFOs and devices are refused.

Examples:
  cell cp ./app box:/srv                 ./app becomes /srv/app (when /srv is a directory)
  cell cp ./app/. box:/srv/app           the contents of ./app into /srv/app
  cell cp config.json box:/etc/myapp/    /etc/myapp/config.json (created with its parents)
  cell cp box:/var/log ./guest-logs      the VM's /var/log as ./guest-logs
  cell cp box:/etc/os-release .          into the current directory`,
    )
    .action(async (src: string, dest: string, _flags: unknown, cmd: Command) => {
      let plan: CopyPlan;
      try {
        plan = planCopy(src, dest);
      } catch (err) {
        reportError(err);
        process.exitCode = EXIT_FAILURE;
        return;
      }
      await withClient(async (client) => {
        const result =
          plan.direction === 'in'
            ? await client.files.copyIn(plan.vm, plan.hostPath, plan.guestPath)
            : await client.files.copyOut(plan.vm, plan.guestPath, plan.hostPath, { owner: ownerForCopyOut() });
        const where = plan.direction === 'in' ? `${plan.vm}:${result.target}` : result.target;
        if (process.stderr.isTTY) process.stderr.write(`copied ${describeCopy(result)} to ${where}\n`);
      })(cmd);
    });
}

/** celld (root) gives what it writes for us to our user; as root there is nothing to change. */
function ownerForCopyOut(): { uid: number; gid: number } | undefined {
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  return uid !== undefined && gid !== undefined && uid !== 0 ? { uid, gid } : undefined;
}
