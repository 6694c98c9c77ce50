import { spawn } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { HostFolderMount } from '../../domain/volume.js';
import { stripControl } from '../../domain/terminal-text.js';
import { signalProcess, tailFile } from './process.js';

/**
 * Host folders (`-v /host/path:/guest`) are shared with virtio-fs: QEMU's `vhost-user-fs-device`
 * talks to one `virtiofsd` per folder over a unix socket, and the guest mounts the tag.
 *
 * Why virtio-fs and not virtio-9p: the guest's kernel (Debian's cloud kernel) has no 9p modules at
 * all; it has fuse and virtiofs, and QEMU 7.2 ships its C virtiofsd in qemu-system-common.
 *
 * How a virtiofsd is confined (for a folder shared by a user other than root):
 * - it runs with the uid, gid and groups of the user who shared the folder (setpriv), so it reaches
 *   what that user may reach and nothing else, and what the guest creates is theirs;
 * - in a user namespace where that user is root (unshare --map-root-user): virtiofsd needs to be
 *   root for its own sandbox, which pivots into the folder in fresh mount, pid and net namespaces
 *   (so `..` and symlinks resolve inside the folder) and drops its capabilities;
 * - in a mount namespace of its own: a tmpfs on /run for the lock virtiofsd keeps there (an
 *   unprivileged user cannot write the host's /run/virtiofsd), and for `:ro` the folder seen
 *   through a read-only bind mount: C virtiofsd has no read-only mode, so the host enforces it.
 * Only the one mapped uid exists in its namespace, so a guest's non-root user cannot create files
 * there (they would belong to no one on the host): guests write shared folders as root.
 * A folder root shares gets a virtiofsd running as root (its own sandbox, the mount namespace),
 * as Docker's bind mounts do: the guest's uids are kept, and its root writes as the host's.
 *
 * The socket is made by virtiofsd in a folder of its own inside the machine's (0700, root's): it
 * starts there (its working directory, set before it drops privileges) and names the socket
 * relatively, so it needs no way through the folders above. It ends by itself when QEMU hangs up.
 */
export const VIRTIOFSD_CANDIDATES = ['/usr/lib/qemu/virtiofsd', '/usr/libexec/virtiofsd'];
const SOCKET_NAME = 'vhost.sock';
const START_TIMEOUT_MS = 10_000;

/** The tag the guest mounts a VM's `index`th host folder by (the agent's `cell.share=` token). */
export const shareTag = (index: number) => `cell-share-${index}`;

export interface RunningShare {
  pid: number;
  socketPath: string;
  exited: Promise<void>;
}

export function virtiofsdPath(): string {
  const found = VIRTIOFSD_CANDIDATES.find((p) => existsSync(p));
  if (!found) {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `host folders need virtiofsd (${VIRTIOFSD_CANDIDATES.join(' or ')}): run cell setup, or apt-get install qemu-system-common`);
  }
  return found;
}

/**
 * The shell that sets up virtiofsd's mount namespace and becomes it. $1 folder, $2 ro|rw, $3 virtiofsd.
 * No thread pool: glib's pool threads call sched_getaffinity, which virtiofsd's own seccomp filter
 * does not allow (measured: SIGSYS on the first large write, and the guest's file system hangs).
 * Attributes are never cached in the guest (timeout=0): see docs/volumes.md.
 */
const SETUP_SCRIPT = [
  'set -e',
  'mount -t tmpfs -o mode=0755,size=1m cellvm-run /run',
  'if [ "$2" = ro ]; then mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; fi',
  `exec "$3" --socket-path=${SOCKET_NAME} -o source="$1" -o sandbox=namespace -o cache=auto -o timeout=0 -o no_posix_lock -o no_flock --thread-pool-size=0 --rlimit-nofile=0`,
].join('\n');

/** The argument vector that starts one share's virtiofsd as `folder.owner`. */
export function virtiofsdArgv(folder: HostFolderMount, virtiofsd: string, celldUid: number): string[] {
  const { uid, gid, groups } = folder.owner;
  const script = ['/bin/sh', '-c', SETUP_SCRIPT, 'cell-share', folder.source, folder.readOnly ? 'ro' : 'rw', virtiofsd];
  // Shared by root: virtiofsd runs as root, as it usually does, so the guest's root may write
  // wherever the host's may (Docker's bind mounts behave so), and files keep the guest's uids.
  if (uid === 0) return ['unshare', '--mount', '--', ...script];
  // Only root can change user; a celld that is not root shares as itself (the owner is celld's user then).
  const asOwner = celldUid === 0 ? ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, groups.length ? `--groups=${groups.join(',')}` : '--clear-groups', '--'] : [];
  return [...asOwner, 'unshare', '--user', '--map-root-user', '--mount', '--', ...script];
}

/** The QEMU arguments for a VM's host folders, given each one's socket. */
export function shareQemuArgs(sockets: readonly string[]): string[] {
  if (sockets.length === 0) return [];
  // microvm's virtio-mmio transports are legacy (virtio 0.9) by default, which libvhost-user
  // refuses ("virtio legacy devices aren't supported"): this machine's devices all go modern.
  // Only these VMs: the device model is part of what a snapshot saves, and these never have one.
  return ['-global', 'virtio-mmio.force-legacy=false', ...sockets.flatMap((socket, i) => ['-chardev', `socket,id=share${i},path=${socket}`, '-device', `vhost-user-fs-device,chardev=share${i},tag=${shareTag(i)}`])];
}

/**
 * Starts a virtiofsd per folder and waits for each one's socket. On any failure the ones started
 * are ended and the error names the folder with the end of its log.
 */
export async function startShares(dir: string, folders: readonly HostFolderMount[]): Promise<RunningShare[]> {
  if (folders.length === 0) return [];
  const virtiofsd = virtiofsdPath();
  const celldUid = process.getuid?.() ?? 0;
  const started: RunningShare[] = [];
  try {
    for (const [i, folder] of folders.entries()) {
      const shareDir = join(dir, `share-${i}`);
      rmSync(shareDir, { recursive: true, force: true });
      mkdirSync(shareDir, { mode: 0o700 });
      if (celldUid === 0) chownSync(shareDir, folder.owner.uid, folder.owner.gid);
      const logPath = join(dir, `virtiofsd-${i}.log`);
      const log = openSync(logPath, 'w', 0o600);
      let child;
      try {
        const [cmd, ...args] = virtiofsdArgv(folder, virtiofsd, celldUid);
        // Its own session, as QEMU's: it outlives celld with the VM it serves.
        child = spawn(cmd!, args, { cwd: shareDir, detached: true, stdio: ['ignore', log, log] });
      } finally {
        closeSync(log);
      }
      const exited = new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.once('error', () => resolve());
      });
      child.unref();
      if (child.pid === undefined) throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `cannot start virtiofsd for ${folder.source}`);
      const share = { pid: child.pid, socketPath: join(shareDir, SOCKET_NAME), exited };
      started.push(share);
      await waitForSocket(share, folder, logPath);
    }
    return started;
  } catch (err) {
    stopShares(started);
    throw err;
  }
}

/** Ends shares whose QEMU never took them (a failed start); a QEMU's own hang-up ends the others. */
export function stopShares(shares: readonly RunningShare[]): void {
  for (const s of shares) signalProcess(s.pid, 'SIGTERM');
}

async function waitForSocket(share: RunningShare, folder: HostFolderMount, logPath: string): Promise<void> {
  let gone = false;
  void share.exited.then(() => (gone = true));
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!existsSync(share.socketPath)) {
    if (gone || Date.now() > deadline) {
      const why = stripControl(tailFile(logPath, 3)).replace(/\n/g, ' | ') || (gone ? 'it exited' : `no socket within ${START_TIMEOUT_MS} ms`);
      throw new CellError(ErrorCodes.BOOT_FAILED, `cannot share host folder ${folder.source}: virtiofsd: ${why}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
