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

/**
 * A host folder shared live into a VM (`-v /abs/path:/guest[:ro]`), through virtio-fs: a
 * virtiofsd per folder, run with `owner`'s uid and groups (the caller who asked for it), confined
 * to the folder. What the guest creates there belongs to `owner` on the host.
 */
export interface HostFolderMount {
  /** Absolute, canonical host path (symlinks resolved with the owner's access when the VM was made). */
  source: string;
  /** Absolute path in the guest. */
  path: string;
  readOnly: boolean;
  owner: { uid: number; gid: number; groups: number[] };
}

/** Host folders a VM may share (each is a virtiofsd process and a virtio-mmio device). */
export const MAX_HOST_FOLDERS_PER_VM = 4;

/**
 * Why a VM's memory cannot be saved (a snapshot, a pause to disk), or null: a host folder's
 * virtio-fs device cannot be migrated at all (docs/volumes.md). Volumes can: they are unmounted
 * for the snapshot and mounted again by every VM that comes out of it.
 */
export function mountsBlockingSnapshot(spec: { hostFolders?: readonly HostFolderMount[] }): string | null {
  if (spec.hostFolders?.length) return `shares host folder ${spec.hostFolders.map((f) => f.source).join(', ')}`;
  return null;
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

/** `-v` as given: a named volume, or a host folder still to be resolved (its path as the caller wrote it, made absolute by the CLI). */
export type MountRequest = ({ kind: 'volume' } & VolumeMount) | { kind: 'host'; source: string; path: string; readOnly: boolean };

/** Whether `-v`'s source names a host path (as Docker tells them: a path, not a name). */
export function isHostPath(source: string): boolean {
  return source.startsWith('/') || source.startsWith('.') || source.startsWith('~');
}

/**
 * `-v NAME:/path[:ro]` or `-v /host/path:/path[:ro]` as a mount. Host paths must be absolute here
 * (the CLI and SDK resolve `./src` and `~` on the caller's side, where they mean something).
 */
export function parseMount(text: string): MountRequest {
  const parts = text.split(':');
  const bad = (why: string) => new CellError(ErrorCodes.INVALID_ARGUMENT, `-v ${JSON.stringify(text)}: ${why}`);
  if (parts.length < 2 || parts.length > 3) throw bad('use NAME:/guest/path[:ro] for a volume or /host/path:/guest/path[:ro] for a host folder');
  const [source, path, mode] = parts as [string, string, string | undefined];
  if (mode !== undefined && mode !== 'ro' && mode !== 'rw') throw bad(`the mode is ro or rw, not "${mode}"`);
  if (!path.startsWith('/') || path.includes('\0') || path.length > 200) throw bad('the guest path must be absolute (at most 200 characters)');
  if (path.split('/').includes('..') || /\s/.test(path)) throw bad('the guest path may not hold "..", spaces or newlines');
  const normal = posix.normalize(path).replace(/\/+$/, '') || '/';
  if (RESERVED.includes(normal) || ['/proc/', '/sys/', '/dev/'].some((p) => normal.startsWith(p))) throw bad(`${normal} is the system's (or the data disk's): mount it elsewhere`);
  const readOnly = mode === 'ro';
  if (isHostPath(source)) {
    if (!source.startsWith('/')) throw bad('a host folder must be an absolute path here (the cell CLI resolves ./ and ~ for you)');
    if (source.includes('\0') || source.length > 4096) throw bad('the host path is not a usable path');
    return { kind: 'host', source: posix.normalize(source), path: normal, readOnly };
  }
  try {
    validateName(source);
  } catch (err) {
    throw bad((err as Error).message);
  }
  return { kind: 'volume', volume: source, path: normal, readOnly };
}

/** `-v NAME:/path[:ro]` as a volume mount (a host path is refused: callers that take only volumes). */
export function parseVolumeMount(text: string): VolumeMount {
  const m = parseMount(text);
  if (m.kind === 'host') throw new CellError(ErrorCodes.INVALID_ARGUMENT, `-v ${JSON.stringify(text)}: a host folder is not a volume here: give a volume name`);
  return { volume: m.volume, path: m.path, readOnly: m.readOnly };
}

/** Several `-v`: at most MAX_VOLUMES_PER_VM volumes and MAX_HOST_FOLDERS_PER_VM folders, each volume and each guest path once. */
export function parseMounts(texts: readonly string[]): { volumes: VolumeMount[]; hostFolders: Extract<MountRequest, { kind: 'host' }>[] } {
  const mounts = texts.map(parseMount);
  const volumes = mounts.flatMap((m) => (m.kind === 'volume' ? [{ volume: m.volume, path: m.path, readOnly: m.readOnly }] : []));
  const hostFolders = mounts.filter((m): m is Extract<MountRequest, { kind: 'host' }> => m.kind === 'host');
  if (volumes.length > MAX_VOLUMES_PER_VM) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `a VM takes at most ${MAX_VOLUMES_PER_VM} volumes`);
  if (hostFolders.length > MAX_HOST_FOLDERS_PER_VM) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `a VM shares at most ${MAX_HOST_FOLDERS_PER_VM} host folders`);
  const seen = new Set<string>();
  for (const m of mounts) {
    const keys = m.kind === 'volume' ? [`v:${m.volume}`, `p:${m.path}`] : [`p:${m.path}`];
    for (const key of keys) {
      if (seen.has(key)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `-v: ${key.startsWith('v:') ? `volume ${m.kind === 'volume' ? m.volume : ''}` : `guest path ${m.path}`} is given twice`);
      seen.add(key);
    }
  }
  return { volumes, hostFolders };
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
