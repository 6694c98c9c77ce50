import type { NetworkStore } from '../store/lease-store.js';
import type { PoolStore } from '../store/pool-store.js';
import type { VolumeStore } from '../store/volume-store.js';
import type { Networking } from './networking.js';
import type { CellConfig } from '../domain/config.js';
import type { CellPaths } from '../domain/paths.js';
import type { CompatKey } from '../domain/snapshot.js';
import type { ActionCacheStore } from '../store/action-cache-store.js';
import type { Db } from '../store/database.js';
import type { ImageStore } from '../store/image-store.js';
import type { SnapshotStore } from '../store/snapshot-store.js';
import type { TemplateStore } from '../store/template-store.js';
import type { VmStore } from '../store/vm-store.js';
import type { EventStore } from '../store/event-store.js';
import type { Backend } from '../vmm/backend.js';
import type { HostReady, ProgressListener } from './host-readiness.js';
import type { LiveMachines } from './live-machines.js';
import type { KeyedLocks } from './locks.js';

/** The records the engine keeps, all in one SQLite database. */
export interface EngineStores {
  events: EventStore;
  vms: VmStore;
  images: ImageStore;
  snapshots: SnapshotStore;
  actionCache: ActionCacheStore;
  templates: TemplateStore;
  networks: NetworkStore;
  volumes: VolumeStore;
  pools: PoolStore;
}

/** Host set-up (packages, kernel, initramfs, agent, built-in images, accelerator), once per daemon. */
export interface HostProvider {
  ensure(onProgress?: ProgressListener, opts?: { reprobe?: boolean }): Promise<HostReady>;
}

export interface EngineLog {
  info(message: string): void;
  warn(message: string): void;
}

/**
 * What every engine service may use. A leaf: it names types only, so a service's constructor
 * (this plus the sibling services it calls) says everything it depends on.
 */
export interface EngineContext {
  readonly paths: CellPaths;
  readonly db: Db;
  readonly stores: EngineStores;
  readonly config: CellConfig;
  readonly host: HostProvider;
  readonly backend: Backend;
  /** The machines this daemon holds a control and agent connection to. */
  readonly live: LiveMachines;
  /** VMs' NICs, addresses and published ports (engine/networking.ts). */
  readonly network: Networking;
  /** Per-VM, per-snapshot and per-cache-key serialisation. */
  readonly locks: KeyedLocks;
  readonly log: EngineLog;
  /**
   * A named step of a multi-step operation (`snapshot:saved`, ...) where a crash drill may stop
   * the daemon: a no-op unless CELL_CRASH_AT names the step (celld then kills itself with
   * SIGKILL) or a test hands in its own.
   */
  readonly checkpoint: (step: string) => Promise<void>;
}

/** What a snapshot taken here depends on; restoring elsewhere checks it first. */
export function compatKey(ctx: Pick<EngineContext, 'backend'>, ready: HostReady): CompatKey {
  return {
    qemuVersion: ready.qemuVersion,
    machine: ctx.backend.machineType,
    cpuModel: ctx.backend.cpuModel(ready.accelerator.accelerator),
    accelerator: ready.accelerator.accelerator,
    kernelDigest: ready.assets.kernel.digest,
    initramfsDigest: ready.assets.initramfs.digest,
  };
}
