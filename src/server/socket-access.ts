import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync } from 'node:fs';

/**
 * Who may talk to celld: its socket is 0660 with group `cell` (CELL_SOCKET_GROUP names another)
 * when that group exists, like Docker's `docker` group, else 0600 (celld's user alone). Anyone who
 * can use celld can make it read and write host paths as celld's user (root, usually): being in
 * the group is being root. celld cannot check a caller's credentials itself (SO_PEERCRED is out of
 * reach of Node's net module without a native addon), so these modes are the whole check.
 */
export const DEFAULT_SOCKET_GROUP = 'cell';

/** The gid of group `name` (through NSS, so LDAP groups count too), or null when there is none. */
export function lookupGroup(name: string): number | null {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name)) return null;
  try {
    const line = execFileSync('getent', ['group', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const gid = Number(line.split(':')[2]);
    return Number.isInteger(gid) ? gid : null;
  } catch {
    return null;
  }
}

/**
 * The socket's group: `CELL_SOCKET_GROUP` (empty for none) if it exists and celld may give files
 * to it (root, or a member), else null. Unset, it is `cell` for root's celld only: a user's own
 * celld is that user's alone unless they name a group (the `cell` group is for root's celld).
 */
export function socketGroup(env: NodeJS.ProcessEnv = process.env): number | null {
  const root = process.getuid?.() === 0;
  const name = env.CELL_SOCKET_GROUP ?? (root ? DEFAULT_SOCKET_GROUP : '');
  if (!name) return null;
  const gid = lookupGroup(name);
  if (gid === null) return null;
  if (root || process.getgroups?.().includes(gid)) return gid;
  return null;
}

/** 0660 with group `gid`, or 0600 when there is no group. */
export function restrictSocket(path: string, gid: number | null): void {
  if (gid !== null) {
    chownSync(path, process.getuid?.() ?? 0, gid);
    chmodSync(path, 0o660);
  } else {
    chmodSync(path, 0o600);
  }
}
