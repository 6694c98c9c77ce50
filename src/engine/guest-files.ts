/**
 * Copying files between the host and a running guest through its agent (docs/protocol.md, "Files").
 *
 *   await copyIntoGuest(agent, '/host/project', '/work');   // /work becomes a copy of /host/project
 *   await copyFromGuest(agent, '/var/log', '/tmp/guest-logs');
 *
 * Both copy SRC to exactly DEST; `cp-targets.ts` adds Docker's rules for `cell cp` (copy into an
 * existing directory, `SRC/.`).
 */
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, posix } from 'node:path';
import type { Stats } from 'node:fs';
import type { AgentClient } from '../agent/client.js';
import type { GuestDirEntry, GuestStat } from '../agent/file-frames.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { CELLD_HOST_FS, hostPathError as hostError, type HostFs } from './host-fs.js';

export interface CopyStats {
  files: number;
  directories: number;
  symlinks: number;
  /** Bytes of regular files copied. */
  bytes: number;
}

export interface Owner {
  uid: number;
  gid: number;
}

const newStats = (): CopyStats => ({ files: 0, directories: 0, symlinks: 0, bytes: 0 });
const READ_CHUNK = 64 * 1024;

/** One entry of a host tree to copy, in creation order (a directory before its contents). */
interface HostEntry {
  /** Host path. */
  path: string;
  /** Path below the copied root, '/'-separated; '' for the root itself. */
  rel: string;
  stats: Stats;
}

/**
 * Copies a host file or directory tree to `guestPath` (absolute) in the guest, which then holds
 * a copy of it: regular files (streamed, never loaded whole; each replaced atomically), directories
 * (created before their contents; an existing one is merged into) and symlinks (copied as links).
 * Modes and file mtimes are kept; everything is owned by root unless `owner` says otherwise. A
 * symlink given as `hostPath` itself is followed. The whole tree is checked before anything is
 * copied: a socket, FIFO or device anywhere in it is an `invalid_argument` error and the guest is
 * left unchanged.
 */
export async function copyIntoGuest(agent: AgentClient, hostPath: string, guestPath: string, owner: Partial<Owner> = {}, host: HostFs = CELLD_HOST_FS): Promise<CopyStats> {
  assertGuestPath(guestPath);
  const own = { uid: owner.uid ?? 0, gid: owner.gid ?? 0 };
  const stats = newStats();
  for (const entry of await planHostTree(host, hostPath)) {
    const target = entry.rel ? posix.join(guestPath, entry.rel) : guestPath;
    const mode = entry.stats.mode & 0o7777;
    if (entry.stats.isDirectory()) {
      await agent.mkdir(target, { mode, ...own });
      stats.directories++;
    } else if (entry.stats.isSymbolicLink()) {
      await agent.symlink(target, await host.readlink(entry.path).catch(hostError(entry.path)), own);
      stats.symlinks++;
    } else {
      // Opened with the caller's access, then read by descriptor.
      const file = await host.openRead(entry.path).catch(hostError(entry.path));
      const source = file.readStream({ highWaterMark: READ_CHUNK });
      try {
        stats.bytes += await agent.putFile(target, { mode, mtime: entry.stats.mtime, ...own }, source);
      } catch (err) {
        throw (err as NodeJS.ErrnoException).syscall ? hostError(entry.path)(err) : err;
      } finally {
        source.destroy();
      }
      stats.files++;
    }
  }
  return stats;
}

/** Every entry under `root` (root first, then depth-first by name); refuses what cannot be copied. */
async function planHostTree(host: HostFs, root: string): Promise<HostEntry[]> {
  const plan: HostEntry[] = [];
  const visit = async (path: string, rel: string, stats: Stats): Promise<void> => {
    if (!stats.isFile() && !stats.isDirectory() && !stats.isSymbolicLink()) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot copy ${path}: it is ${hostKind(stats)} (only regular files, directories and symlinks are copied)`);
    }
    plan.push({ path, rel, stats });
    if (!stats.isDirectory()) return;
    const names = (await host.readdir(path).catch(hostError(path))).sort();
    for (const name of names) {
      const child = join(path, name);
      await visit(child, rel ? `${rel}/${name}` : name, await host.lstat(child).catch(hostError(child)));
    }
  };
  await visit(root, '', await host.stat(root).catch(hostError(root)));
  return plan;
}

/**
 * Copies a guest regular file or directory tree to `hostPath`, which must not be an existing
 * directory: the copy is built under a temporary name beside it and renamed into place, so a failed
 * copy leaves nothing behind (an existing file at `hostPath` is replaced; an existing directory is
 * a `conflict`). Symlinks inside the tree are copied as links, a symlink named by `guestPath`
 * itself is followed. Set-user-ID and set-group-ID bits are dropped (the guest is not trusted with
 * the host's privileges); files get `owner` when given. Guest file names are checked: one that
 * would leave the destination ('..', '/', NUL) or is not UTF-8 aborts the copy.
 */
export async function copyFromGuest(agent: AgentClient, guestPath: string, hostPath: string, owner?: Owner, host: HostFs = CELLD_HOST_FS): Promise<CopyStats> {
  assertGuestPath(guestPath);
  const top = await agent.stat(guestPath, { follow: true });
  refuseSpecial(top, guestPath);
  const existing = await host.lstat(hostPath).catch(() => null);
  if (existing?.isDirectory()) {
    throw new CellError(ErrorCodes.CONFLICT, `${hostPath} already exists and is a directory; remove it or copy to a new path`);
  }
  const parent = dirname(hostPath);
  const parentStats = await host.stat(parent).catch(() => null);
  if (!parentStats?.isDirectory()) throw new CellError(ErrorCodes.NOT_FOUND, `the host directory ${parent} does not exist`);
  if (existing && top.kind === 'directory') {
    throw new CellError(ErrorCodes.CONFLICT, `${hostPath} already exists and is not a directory`);
  }
  const temp = join(parent, `.${basename(hostPath)}.cell-${randomBytes(6).toString('hex')}`);
  const stats = newStats();
  try {
    if (top.kind === 'file') {
      await downloadFile(host, agent, guestPath, temp, top, owner, stats);
    } else {
      await downloadDir(host, agent, guestPath, temp, top, owner, stats);
    }
    await host.rename(temp, hostPath).catch(hostError(hostPath));
  } catch (err) {
    await host.rm(temp).catch(() => {});
    throw err;
  }
  return stats;
}

async function downloadFile(host: HostFs, agent: AgentClient, guestPath: string, hostPath: string, st: GuestStat, owner: Owner | undefined, stats: CopyStats): Promise<void> {
  // 'wx': never through something already there (a symlink the guest listed twice, say).
  const file = await host.create(hostPath, 0o600).catch(hostError(hostPath));
  try {
    for await (const chunk of agent.readFile(guestPath)) {
      await file.write(chunk).catch(hostError(hostPath));
      stats.bytes += chunk.length;
    }
    await file.chmod(safeMode(st.mode)).catch(hostError(hostPath));
    await file.utimes(new Date(st.mtimeMs), new Date(st.mtimeMs)).catch(hostError(hostPath));
    if (owner) await file.chown(owner.uid, owner.gid).catch(hostError(hostPath));
  } finally {
    await file.close();
  }
  stats.files++;
}

async function downloadDir(host: HostFs, agent: AgentClient, guestDir: string, hostDir: string, st: GuestStat, owner: Owner | undefined, stats: CopyStats): Promise<void> {
  await host.mkdir(hostDir, 0o700).catch(hostError(hostDir)); // private until it is complete
  stats.directories++;
  const seen = new Set<string>();
  const entries = (await agent.listDir(guestDir)).sort((a, b) => Buffer.compare(a.nameBytes, b.nameBytes));
  for (const entry of entries) {
    const name = safeName(entry, guestDir, seen);
    const from = posix.join(guestDir, name);
    const to = join(hostDir, name);
    refuseSpecial(entry, from);
    if (entry.kind === 'file') await downloadFile(host, agent, from, to, entry, owner, stats);
    else if (entry.kind === 'directory') await downloadDir(host, agent, from, to, entry, owner, stats);
    else {
      await host.symlink(entry.linkTarget, to).catch(hostError(to));
      if (owner) await host.lchown(to, owner.uid, owner.gid).catch(hostError(to));
      stats.symlinks++;
    }
  }
  // Mode and time last: a read-only directory could not have been filled, and filling it moved its mtime.
  await host.chmod(hostDir, safeMode(st.mode)).catch(hostError(hostDir));
  await host.utimes(hostDir, new Date(st.mtimeMs), new Date(st.mtimeMs)).catch(hostError(hostDir));
  if (owner) await host.lchown(hostDir, owner.uid, owner.gid).catch(hostError(hostDir));
}

/** A guest-provided name that stays inside its directory, or an error that stops the copy. */
function safeName(entry: GuestDirEntry, dir: string, seen: Set<string>): string {
  const { name } = entry;
  const unsafe =
    name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')
      ? 'would leave the destination'
      : !Buffer.from(name, 'utf8').equals(entry.nameBytes)
        ? 'is not valid UTF-8'
        : seen.has(name)
          ? 'is listed twice'
          : null;
  if (unsafe) throw new CellError(ErrorCodes.AGENT_ERROR, `refusing the guest's entry ${JSON.stringify(name)} in ${dir}: the name ${unsafe}`);
  seen.add(name);
  return name;
}

function refuseSpecial(st: GuestStat, path: string): void {
  if (st.kind === 'file' || st.kind === 'directory' || st.kind === 'symlink') return;
  throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot copy ${path}: it is a ${st.kind} (only regular files, directories and symlinks are copied)`);
}

function assertGuestPath(path: string): void {
  if (!posix.isAbsolute(path)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `the path in the VM must be absolute, not "${path}"`);
}

/** Permission bits a copy may carry onto the host: no set-user-ID or set-group-ID. */
function safeMode(mode: number): number {
  return mode & 0o1777;
}

function hostKind(st: Stats): string {
  if (st.isSocket()) return 'a socket';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}
