import { posix } from 'node:path';
import { CellError, ErrorCodes } from './errors.js';
import { validateName } from './ids.js';

/**
 * Named volumes (`cell volume`, `run -v NAME:/path[:ro]`): a sparse ext4 image per volume, attached
 * to a VM as a disk of its own at boot (microvm has no hotplug) and mounted by the guest's agent.
 * They outlive VMs; one VM writes a volume at a time, any number read it while none writes.
 */
export interface VolumeRecord {
  id: string;
  name: string;
  sizeBytes: number;
  createdAt: string;
  labels?: Record<string, string>;
}

/** A VM's use of a volume, as its spec records it. */
export interface VolumeMount {
  volume: string;
  /** Absolute path in the guest. */
  path: string;
  readOnly: boolean;
}

export const DEFAULT_VOLUME_BYTES = 10 * 1024 ** 3;
export const MIN_VOLUME_BYTES = 16 * 1024 ** 2;
export const MAX_VOLUME_BYTES = 16 * 1024 ** 4;
/** Disks a VM may have for volumes (each is a virtio-mmio device and a kernel command line token). */
export const MAX_VOLUMES_PER_VM = 8;

export function validateVolumeSize(bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < MIN_VOLUME_BYTES || bytes > MAX_VOLUME_BYTES) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `a volume of ${bytes} bytes is out of range: give 16M to 16T`);
  }
  return bytes;
}

/** Guest paths a volume may not cover: the system's own mounts and the data disk's. */
const RESERVED = ['/', '/proc', '/sys', '/dev', '/run', '/data'];

/**
 * `-v NAME:/path[:ro]` as a mount. A host path (`/abs`, `./rel`, `~`) is a shared host folder, which
 * is not built yet: refused with that reason rather than taken for a volume name.
 */
export function parseVolumeMount(text: string): VolumeMount {
  const parts = text.split(':');
  const bad = (why: string) => new CellError(ErrorCodes.INVALID_ARGUMENT, `-v ${JSON.stringify(text)}: ${why}`);
  if (parts.length < 2 || parts.length > 3) throw bad('use NAME:/guest/path or NAME:/guest/path:ro');
  const [source, path, mode] = parts as [string, string, string | undefined];
  if (source.startsWith('/') || source.startsWith('.') || source.startsWith('~')) {
    throw bad('host folders are not shared yet (issue 13): give a volume name (cell volume create NAME)');
  }
  try {
    validateName(source);
  } catch (err) {
    throw bad((err as Error).message);
  }
  if (mode !== undefined && mode !== 'ro' && mode !== 'rw') throw bad(`the mode is ro or rw, not "${mode}"`);
  if (!path.startsWith('/') || path.includes('\0') || path.length > 200) throw bad('the guest path must be absolute (at most 200 characters)');
  if (path.split('/').includes('..') || /\s/.test(path)) throw bad('the guest path may not hold "..", spaces or newlines');
  const normal = posix.normalize(path).replace(/\/+$/, '') || '/';
  if (RESERVED.includes(normal) || ['/proc/', '/sys/', '/dev/'].some((p) => normal.startsWith(p))) throw bad(`${normal} is the system's (or the data disk's): mount the volume elsewhere`);
  return { volume: source, path: normal, readOnly: mode === 'ro' };
}

/** Several `-v`: at most MAX_VOLUMES_PER_VM, each volume and each path once. */
export function parseVolumeMounts(texts: readonly string[]): VolumeMount[] {
  const mounts = texts.map(parseVolumeMount);
  if (mounts.length > MAX_VOLUMES_PER_VM) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `a VM takes at most ${MAX_VOLUMES_PER_VM} volumes`);
  const seen = new Set<string>();
  for (const m of mounts) {
    for (const key of [`v:${m.volume}`, `p:${m.path}`]) {
      if (seen.has(key)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `-v: ${key.startsWith('v:') ? `volume ${m.volume}` : `guest path ${m.path}`} is given twice`);
      seen.add(key);
    }
  }
  return mounts;
}

/**
 * The one-writer rule for a VM about to boot with `mounts`, given the live VMs' mounts: a
 * volume it writes must have no other live user; one it reads must have no live writer.
 */
export function assertVolumesFree(mounts: readonly VolumeMount[], live: readonly { name: string; mounts: readonly VolumeMount[] }[]): void {
  for (const m of mounts) {
    const users = live.flatMap((vm) => vm.mounts.filter((o) => o.volume === m.volume).map((o) => ({ vm: vm.name, readOnly: o.readOnly })));
    const conflicting = m.readOnly ? users.filter((u) => !u.readOnly) : users;
    if (conflicting.length > 0) {
      const holders = conflicting.map((u) => `${u.vm}${u.readOnly ? ' (read-only)' : ''}`).join(', ');
      throw new CellError(
        ErrorCodes.CONFLICT,
        `volume ${m.volume} is in use by running VM ${holders}: ${m.readOnly ? 'a volume another VM writes cannot be read meanwhile' : 'one VM writes a volume at a time'} (stop it first, or mount it :ro everywhere)`,
        { volume: m.volume, holders: conflicting.map((u) => u.vm) },
      );
    }
  }
}
