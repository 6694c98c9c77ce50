import { readdirSync, statSync } from 'node:fs';
import { randomInt } from 'node:crypto';

/**
 * How celld confines each QEMU it starts, as Firecracker's jailer and libvirt do:
 * - a seccomp filter (`-sandbox on,...`): no obsolete system calls, no spawning processes
 *   (fork, exec), no changing scheduling or resource limits, no set*id unless `-runas` needs it;
 * - an unprivileged user of its own when celld is root (`-runas UID:GID`, a uid per machine, no
 *   supplementary groups): QEMU opens its disks, RAM file, sockets and logs as root, then drops
 *   to that uid with no capabilities before the guest runs;
 * - a cgroup per machine with memory, pids and cpu limits (cgroup.ts).
 * CELL_CONFINE=0 on celld turns all three off (for comparison and debugging).
 */
export function confinementEnabled(): boolean {
  return process.env.CELL_CONFINE !== '0';
}

export interface RunAs {
  uid: number;
  gid: number;
}

/**
 * QEMU 7.2 installs its seccomp filter before `-runas` drops privileges, so with
 * `elevateprivileges=deny` its own setgid() kills it (SIGSYS, syscall 106, measured). With
 * `-runas` set*id stays allowed: once QEMU runs as an unprivileged uid with no capabilities and
 * no_new_privs, set*id cannot give it anything back.
 */
export function sandboxOption(runAs: boolean): string {
  return `on,obsolete=deny,elevateprivileges=${runAs ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`;
}

/** The QEMU arguments for a confinement: `-sandbox`, and `-runas` when given a user. */
export function confinementArgv(c: { sandbox: boolean; runAs?: RunAs }): string[] {
  if (!c.sandbox) return [];
  return ['-sandbox', sandboxOption(c.runAs !== undefined), ...(c.runAs ? ['-runas', `${c.runAs.uid}:${c.runAs.gid}`] : [])];
}

/** Per-machine uids (and gids of the same number) come from this range; no account is needed. */
export const QEMU_UID_BASE = Number(process.env.CELL_QEMU_UID_BASE ?? 0x70000000);
export const QEMU_UID_COUNT = 0x100000;

/** Uids of the processes running now (the owner of /proc/PID). */
function uidsInUse(): Set<number> {
  const uids = new Set<number>();
  for (const entry of readdirSync('/proc')) {
    if (entry.charCodeAt(0) < 48 || entry.charCodeAt(0) > 57) continue;
    try {
      uids.add(statSync(`/proc/${entry}`).uid);
    } catch {
      /* exited meanwhile */
    }
  }
  return uids;
}

/**
 * A uid no running process has, for one machine's QEMU, or undefined when celld is not root (it
 * cannot change user, and its QEMU already runs unprivileged as celld's user).
 */
export function pickRunAs(): RunAs | undefined {
  if (process.getuid?.() !== 0 || !confinementEnabled()) return undefined;
  const used = uidsInUse();
  for (let i = 0; i < 64; i++) {
    const uid = QEMU_UID_BASE + randomInt(QEMU_UID_COUNT);
    if (!used.has(uid)) return { uid, gid: uid };
  }
  throw new Error('no free uid for QEMU in the range CELL_QEMU_UID_BASE..+2^20');
}
