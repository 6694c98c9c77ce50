import { readFileSync } from 'node:fs';
import { hostCreds } from '../host/host-creds.js';

export { HOST_CREDS_ADDON, hostCreds } from '../host/host-creds.js';

/** Who is at the other end of celld's socket, as the kernel saw them connect (SO_PEERCRED). */
export interface Caller {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups, from /proc/<pid>/status at connect time ([gid] alone if it is gone). */
  groups: number[];
}

/** The caller on a unix socket descriptor, or null when the addon is missing or the fd is not one. */
export function identifyCaller(fd: number): Caller | null {
  const creds = hostCreds();
  if (!creds || fd < 0) return null;
  let peer;
  try {
    peer = creds.peerCredentials(fd);
  } catch {
    return null;
  }
  return { ...peer, groups: supplementaryGroups(peer.pid, peer.uid) ?? [peer.gid] };
}

/** The groups of process `pid` if it is still a process of `uid` (a pid reused by another user's process counts for nothing). */
function supplementaryGroups(pid: number, uid: number): number[] | null {
  try {
    const lines = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n');
    const uids = lines.find((l) => l.startsWith('Uid:'))?.slice(4).trim().split(/\s+/).map(Number) ?? [];
    if (uids.length === 0 || uids.some((u) => u !== uid)) return null;
    const line = lines.find((l) => l.startsWith('Groups:'));
    if (line === undefined) return null;
    return line
      .slice('Groups:'.length)
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((g) => Number.isInteger(g) && g >= 0)
      .slice(0, 256);
  } catch {
    return null;
  }
}

/**
 * Whether a caller may use celld at all: root, celld's own user, or a member of the socket's
 * group. The socket's mode already keeps others out; this holds even if someone loosens it.
 */
export function mayUseCelld(caller: Caller, socketGroup: number | null): boolean {
  const self = process.getuid?.() ?? 0;
  if (caller.uid === 0 || caller.uid === self) return true;
  return socketGroup !== null && (caller.gid === socketGroup || caller.groups.includes(socketGroup));
}
