import { availableParallelism, totalmem } from 'node:os';
import { CellError, ErrorCodes } from './errors.js';
import type { PortSpec, PublishedPort } from './network.js';
import type { EgressPolicy } from './egress.js';
import type { HealthCheck, HealthState } from './health.js';
import type { VmTimeouts } from './timeouts.js';
import type { HostFolderMount, VolumeMount } from './volume.js';

export type { VmState } from './vm-state.js';
import type { VmState } from './vm-state.js';

/** What the user asked for; persisted so `cell start` boots the same machine again. */
export interface VmSpec {
  image: string;
  imageDigest: string;
  cpus: number;
  memoryMib: number;
  /** The main command (image entrypoint/cmd combined with the user's); empty = idle VM. */
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
  /** Seconds; 0 = no limit. Applies to the main command. */
  timeoutSec: number;
  autoRemove: boolean;
  /** An empty ext4 disk of this many MiB mounted at /data (0 or absent: none). Kept by snapshots. */
  dataDiskMib?: number;
  /** Host-side caps on the guest's disk and entropy use (absent: none). Forks keep their snapshot's. */
  limits?: IoLimits;
  /**
   * The networks it is on, its way out first; empty or absent (VMs made before networking): no NIC
   * at all. `connect` and `disconnect` change it; forks are on their snapshot's.
   */
  networks?: string[];
  /** Published ports (`-p`): served while it runs. */
  ports?: PortSpec[];
  /** What it may reach outside (`--egress`); absent: anything but the host, link-local and private ranges. */
  egress?: EgressPolicy;
  /** `--label k=v` (domain/labels.ts). */
  labels?: Record<string, string>;
  /** `--health-cmd` and friends (domain/health.ts); forks keep their snapshot's. */
  health?: HealthCheck;
  /** `-v NAME:/path[:ro]`: named volumes (domain/volume.ts), attached at each boot. */
  volumes?: VolumeMount[];
  /** `-v /host/path:/path[:ro]`: host folders shared live (virtio-fs) at each boot. */
  hostFolders?: HostFolderMount[];
  /** `--ttl`, `--idle-timeout` (domain/timeouts.ts); forks keep their snapshot's; `cell update` changes them. */
  timeouts?: VmTimeouts;
  /** Set on VMs started with `run --template`: which template and how (warm fork or cold boot). */
  template?: TemplateStart;
}

/**
 * Rates QEMU holds a guest to, as Firecracker's rate limiters do: a guest that hammers its disks
 * or the entropy device slows itself down, not the host and its neighbours.
 */
export interface IoLimits {
  /** Disk operations per second, reads and writes together, per disk. */
  diskIops?: number;
  /** Disk bytes per second, reads and writes together, per disk. */
  diskBytesPerSec?: number;
  /** Bytes per second the guest may draw from the host's entropy (virtio-rng). */
  rngBytesPerSec?: number;
}

/** Bounds of each limit: at least enough to boot (QEMU refuses less than 1), at most what QEMU takes. */
export const IO_LIMIT_BOUNDS: Record<keyof IoLimits, { min: number; max: number; flag: string }> = {
  diskIops: { min: 10, max: 1_000_000, flag: '--disk-iops' },
  diskBytesPerSec: { min: 64 * 1024, max: 2 ** 50, flag: '--disk-bps' },
  rngBytesPerSec: { min: 64, max: 2 ** 40, flag: '--rng-bps' },
};

/** Checks limits from a user or an archive; returns them without absent fields, or undefined when none is set. */
export function validateIoLimits(limits: IoLimits | undefined): IoLimits | undefined {
  if (!limits) return undefined;
  const out: IoLimits = {};
  for (const key of Object.keys(IO_LIMIT_BOUNDS) as (keyof IoLimits)[]) {
    const value = limits[key];
    if (value === undefined) continue;
    const { min, max, flag } = IO_LIMIT_BOUNDS[key];
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${flag} ${value} is out of range: give a whole number from ${min} to ${max}`);
    }
    out[key] = value;
  }
  for (const key of Object.keys(limits)) {
    if (!(key in IO_LIMIT_BOUNDS)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `unknown I/O limit "${key}"`);
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

export interface TemplateStart {
  /** The template variant's name. */
  name: string;
  revision: string;
  start: 'warm' | 'cold';
  /** Why: the snapshot it forked, or why there was none to fork. */
  reason: string;
}

export interface VmExit {
  exitCode: number | null;
  signal: number | null;
  /** Why the VM stopped: 'exited' (main command ended), 'stopped' (user), 'crashed', 'boot_failed', 'timeout'. */
  reason: string;
  at: string;
}

export interface VmRecord {
  id: string;
  name: string;
  state: VmState;
  spec: VmSpec;
  createdAt: string;
  startedAt: string | null;
  stoppedAt: string | null;
  pid: number | null;
  accelerator: string | null;
  exit: VmExit | null;
  /** The snapshot whose disk layer this VM's overlay sits on (null: the image's base disk). */
  baseSnapshot: string | null;
  /** Its address on its network and the ports it publishes now (null: no network, or never started). */
  network?: VmNetwork | null;
  /** Where its health check stands (null: it has none, or it never ran). */
  health?: HealthState | null;
  /** When its TTL ends (inspect of a running or paused VM with `--ttl`; computed, not stored). */
  expiresAt?: string;
}

export interface VmNetwork {
  /** Its address on each network it is on; the first is its way out. */
  networks: { name: string; address: string }[];
  ports: PublishedPort[];
  /** Connections and DNS questions its egress rules refused (through celld's proxy and resolver). */
  egressDenied: number;
  /**
   * Packets its namespace's rules dropped since its machine started (CIDR denies, private
   * ranges, the rest under an allow list, spoofed sources): shown by `cell inspect` of a running
   * VM on the host's networking only.
   */
  droppedPackets?: number;
}

/** A VM as first recorded: created, never started. */
export function newVmRecord(id: string, name: string, spec: VmSpec, baseSnapshot: string | null): VmRecord {
  return {
    id,
    name,
    state: 'created',
    spec,
    createdAt: new Date().toISOString(),
    startedAt: null,
    stoppedAt: null,
    pid: null,
    accelerator: null,
    exit: null,
    baseSnapshot,
  };
}

export const DEFAULT_CPUS = 1;
export const DEFAULT_MEMORY_MIB = 256;
export const MIN_MEMORY_MIB = 64;
/** Where a VM's data disk is mounted in the guest. */
export const DATA_DISK_MOUNT = '/data';

export function validateResources(cpus: number, memoryMib: number): void {
  const hostCpus = availableParallelism();
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > hostCpus) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--cpus ${cpus} is out of range: this host allows 1 to ${hostCpus}`);
  }
  const hostMib = Math.floor(totalmem() / (1024 * 1024));
  if (!Number.isInteger(memoryMib) || memoryMib < MIN_MEMORY_MIB || memoryMib > hostMib) {
    throw new CellError(
      ErrorCodes.INVALID_ARGUMENT,
      `--memory ${memoryMib} is out of range: give MiB from ${MIN_MEMORY_MIB} to ${hostMib} (this host's memory)`,
    );
  }
}

export function validateEnv(env: readonly string[]): void {
  for (const e of env) {
    const eq = e.indexOf('=');
    if (eq <= 0 || /[\0]/.test(e)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `invalid environment entry "${e}": expected KEY=VALUE`);
    }
  }
}

/** Later entries win, like `docker run -e` over the image's Env. */
export function mergeEnv(...lists: readonly (readonly string[])[]): string[] {
  const map = new Map<string, string>();
  for (const list of lists) for (const e of list) map.set(e.slice(0, e.indexOf('=')), e);
  return [...map.values()];
}
