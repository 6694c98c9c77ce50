import { matchesLabels } from '../domain/labels.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { Api } from '../api/routes.js';
import type { PushReply, Snapshot } from '../api/snapshots.js';
import type { Vm } from '../api/vms.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';
import type { RemoveOptions } from './vms.js';

const { snapshots } = Api;

export interface SnapshotTakeOptions extends RequestOptions {
  name?: string;
  /** Stop the VM after the snapshot (default: it keeps running). */
  stop?: boolean;
  /** `k=v` labels added to the VM's. */
  labels?: string[];
}
export interface SnapshotListOptions extends RequestOptions {
  /** Only snapshots with every one of these labels: `k` (has the key) or `k=v`. */
  labels?: string[];
}
export interface SnapshotForkOptions extends RequestOptions {
  /** How many forks (default 1). */
  count?: number;
  /** Name of the fork, or prefix of the forks' names (`NAME-1`, `NAME-2`, ...). */
  name?: string;
  /** `k=v` labels added to the snapshot's. */
  labels?: string[];
}
export interface SnapshotImportOptions extends RequestOptions {
  name?: string;
}
export interface SnapshotPoolOptions extends RequestOptions {
  /** Spares that have run a fork's first steps (an identity refresh, a command) and wait paused:
   * forks from them answer sooner, but their guest ran for some milliseconds after the snapshot
   * point (docs/pools.md). Default: exact spares, paused at the snapshot point. */
  warm?: boolean;
}
export interface SnapshotPruneOptions extends RequestOptions {
  maxCount?: number;
  maxBytes?: number;
}

/** Snapshots: take, fork, restore, export and import, prune. */
export class SnapshotsClient {
  constructor(private readonly transport: Transport) {}

  async list(opts: SnapshotListOptions = {}): Promise<Snapshot[]> {
    const all = await this.transport.call(snapshots.list, {}, opts);
    return opts.labels?.length ? all.filter((s) => matchesLabels(s.spec.labels, opts.labels!)) : all;
  }

  get(ref: string, opts: RequestOptions = {}): Promise<Snapshot> {
    return this.transport.call(snapshots.get, { params: { ref } }, opts);
  }

  /** Captures a VM's memory, devices and disk. */
  take(vmRef: string, opts: SnapshotTakeOptions = {}): Promise<Snapshot> {
    return this.transport.call(snapshots.take, { params: { ref: vmRef }, body: { name: opts.name, stop: opts.stop, ...(opts.labels ? { labels: opts.labels } : {}) } }, opts);
  }

  /** Starts running forks of a snapshot, each with its own identity. */
  fork(ref: string, opts: SnapshotForkOptions = {}): Promise<Vm[]> {
    return this.transport.call(snapshots.fork, { params: { ref }, body: { count: opts.count, name: opts.name, ...(opts.labels ? { labels: opts.labels } : {}) } }, opts);
  }

  /**
   * Keeps `size` spares of the snapshot ready, so forks only resume one (0 removes the pool). They
   * are made in the background: the reply's `pool.ready` counts those ready now.
   */
  setPool(ref: string, size: number, opts: SnapshotPoolOptions = {}): Promise<Snapshot> {
    return this.transport.call(snapshots.pool, { params: { ref }, body: { size, ...(opts.warm !== undefined ? { warm: opts.warm } : {}) } }, opts);
  }

  /** Rolls a VM back to a snapshot. */
  restore(vmRef: string, snapshot: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(snapshots.restore, { params: { ref: vmRef }, body: { snapshot } }, opts);
  }

  remove(ref: string, opts: RemoveOptions = {}): Promise<void> {
    return this.transport.call(snapshots.remove, { params: { ref }, query: { force: opts.force } }, opts);
  }

  /** `file` is a path on celld's host. */
  export(ref: string, file: string, opts: RequestOptions = {}): Promise<{ bytes: number }> {
    return this.transport.call(snapshots.export, { params: { ref }, body: { file } }, opts);
  }

  /** `file` is a path on celld's host. */
  import(file: string, opts: SnapshotImportOptions = {}): Promise<Snapshot> {
    return this.transport.call(snapshots.import, { body: { file, name: opts.name } }, opts);
  }

  /**
   * Sends the snapshot to a registry (`host:5000/ns/name:tag`) as an OCI artifact, only the blobs
   * it lacks; credentials are `cell login`'s. `onProgress` hears bytes dealt with of all.
   */
  async push(ref: string, reference: string, opts: RequestOptions & { insecureRegistries?: string[]; onProgress?: (done: number, total: number) => void } = {}): Promise<PushReply> {
    let result: PushReply | undefined;
    for await (const event of this.transport.stream(snapshots.push, { params: { ref }, body: { reference, insecureRegistries: opts.insecureRegistries } }, opts)) {
      if (event.type === 'progress') opts.onProgress?.(event.done, event.total);
      if (event.type === 'pushed') result = event.result;
    }
    if (!result) throw new CellError(ErrorCodes.INTERNAL, 'the push ended without its result');
    return result;
  }

  /** Fetches a snapshot pushed with `push`; refused before its RAM is fetched if this host cannot restore it. */
  async pull(
    reference: string,
    opts: RequestOptions & {
      name?: string;
      insecureRegistries?: string[];
      onProgress?: (done: number, total: number) => void;
      /** Before the blobs move: what comes from the registry, and the RAM chunks its ancestors here had. */
      onTransfer?: (summary: { fetched: { blobs: number; bytes: number }; reused: { blobs: number; bytes: number } }) => void;
    } = {},
  ): Promise<Snapshot> {
    let snapshot: Snapshot | undefined;
    for await (const event of this.transport.stream(snapshots.pull, { body: { reference, name: opts.name, insecureRegistries: opts.insecureRegistries } }, opts)) {
      if (event.type === 'progress') opts.onProgress?.(event.done, event.total);
      if (event.type === 'transferred') opts.onTransfer?.({ fetched: event.fetched, reused: event.reused });
      if (event.type === 'snapshot') snapshot = event.snapshot;
    }
    if (!snapshot) throw new CellError(ErrorCodes.INTERNAL, 'the pull ended without a snapshot');
    return snapshot;
  }

  prune(opts: SnapshotPruneOptions = {}): Promise<{ removed: Snapshot[] }> {
    return this.transport.call(snapshots.prune, { body: { maxCount: opts.maxCount, maxBytes: opts.maxBytes } }, opts);
  }
}
