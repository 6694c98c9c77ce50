/**
 * `cell cp` semantics, as `docker cp` has them: where SRC lands given DEST.
 *
 * - DEST is an existing directory, or ends with '/': SRC is copied into it (DEST/<name of SRC>).
 * - Otherwise DEST is the copy's own path (a new file or directory; an existing file is replaced).
 * - SRC ending with '/.' copies the directory's contents: DEST itself becomes (or is merged into,
 *   for a copy into the VM) the copy.
 */
import { basename, isAbsolute, join, posix } from 'node:path';
import type { AgentClient } from '../agent/client.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { copyFromGuest, copyIntoGuest, type CopyStats, type Owner } from './guest-files.js';
import { CELLD_HOST_FS, type HostFs } from './host-fs.js';

export interface CopyResult extends CopyStats {
  /** The path the copy was written to (in the VM for copy-in, on the host for copy-out). */
  target: string;
}

const contentsOnly = (path: string) => path === '.' || path.endsWith('/.');

/** `cell cp HOST_PATH VM:GUEST_PATH`. */
export async function copyIn(agent: AgentClient, hostPath: string, guestPath: string, host: HostFs = CELLD_HOST_FS): Promise<CopyResult> {
  assertHostPath(hostPath);
  const guest = posix.isAbsolute(guestPath) ? guestPath : `/${guestPath}`; // like docker: relative to the VM's /
  let target = guest;
  if (!contentsOnly(hostPath) && (guest.endsWith('/') || (await guestIsDirectory(agent, guest)))) {
    target = posix.join(guest, basename(hostPath));
  }
  target = normalize(target);
  return { target, ...(await copyIntoGuest(agent, hostPath, target, {}, host)) };
}

/** `cell cp VM:GUEST_PATH HOST_PATH`; `owner` gets the copied files (the CLI's user). */
export async function copyOut(agent: AgentClient, guestPath: string, hostPath: string, owner?: Owner, host: HostFs = CELLD_HOST_FS): Promise<CopyResult> {
  assertHostPath(hostPath);
  const guest = normalize(posix.isAbsolute(guestPath) ? guestPath : `/${guestPath}`);
  let target = hostPath;
  if (!contentsOnly(guestPath) && (hostPath.endsWith('/') || (await hostIsDirectory(host, hostPath)))) {
    const name = posix.basename(guest);
    if (!name) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `copying the VM's / needs a destination that does not exist yet, not the directory ${hostPath}`);
    target = join(hostPath, name);
  }
  target = target.length > 1 ? target.replace(/\/+$/, '') : target;
  return { target, ...(await copyFromGuest(agent, guest, target, owner, host)) };
}

async function guestIsDirectory(agent: AgentClient, path: string): Promise<boolean> {
  try {
    return (await agent.stat(path, { follow: true })).kind === 'directory';
  } catch (err) {
    if (err instanceof CellError && err.code === ErrorCodes.NOT_FOUND) return false;
    throw err;
  }
}

async function hostIsDirectory(host: HostFs, path: string): Promise<boolean> {
  return (await host.stat(path).catch(() => null))?.isDirectory() ?? false;
}

/** Drops '.' components and trailing slashes ('/srv/app/.' is '/srv/app'). */
function normalize(guestPath: string): string {
  return posix.normalize(guestPath).replace(/(.)\/+$/, '$1');
}

function assertHostPath(path: string): void {
  // celld may run elsewhere than the caller's working directory: relative paths are the client's to resolve.
  if (!isAbsolute(path)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `the host path must be absolute, not "${path}"`);
}
