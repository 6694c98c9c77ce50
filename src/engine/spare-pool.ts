import { rename, rm } from 'node:fs/promises';
import { newId } from '../domain/ids.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import type { EngineContext } from './context.js';
import type { PreparedRestore } from './live-machines.js';
import { prepareSpare } from './machine-spec.js';

/** A QEMU restored from a snapshot and paused before its first instruction, waiting for a fork. */
export interface Spare {
  /** The id the VM that takes it will have (its directory and QEMU name are made for it). */
  id: string;
  snapshotId: string;
  prepared: PreparedRestore;
  createdAt: number;
}

/** How many spares the pool keeps at most (the oldest goes first), and for how long. */
const MAX_SPARES = 4;
const IDLE_MS = 10 * 60_000;

export interface SparePoolOptions {
  /** Default: unless CELL_SPARES=0. */
  enabled?: boolean;
  /** Spares kept at most (the oldest goes first). */
  max?: number;
  /** A spare nobody took for this long is ended. */
  idleMs?: number;
}

export function sparesEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CELL_SPARES !== '0';
}

/**
 * Spares for snapshots that were forked recently. Starting QEMU and loading a snapshot's device
 * state is most of a fork before the guest runs (measured here under TCG: ~75 of ~190 ms); a
 * spare has done both, so a fork that takes one only resumes it. Every fork of a snapshot
 * starts a new spare for the next one in the background. Spares have no VM record: they die with
 * celld (`closeAll`), when their snapshot is removed (`drop`), and after ten idle minutes; a
 * celld that crashed leaves their directories, which the next one sweeps (recovery.ts).
 * CELL_SPARES=0 turns them off.
 */
export class SparePool {
  private readonly spares = new Map<string, Spare>();
  /** Spares on their way, by snapshot id: closeAll waits for them (they end themselves). */
  private readonly starting = new Map<string, Promise<void>>();
  private closed = false;

  private readonly enabled: boolean;
  private readonly max: number;
  private readonly idleMs: number;

  constructor(
    private readonly ctx: EngineContext,
    opts: SparePoolOptions = {},
  ) {
    this.enabled = opts.enabled ?? sparesEnabled();
    this.max = opts.max ?? MAX_SPARES;
    this.idleMs = opts.idleMs ?? IDLE_MS;
  }

  /**
   * Takes the spare of a snapshot, if one is ready, and moves its folder to vms/<id>/ where the VM
   * record will point. QEMU holds its files open and its sockets move with the folder.
   */
  async take(snapshotId: string): Promise<Spare | undefined> {
    for (const [id, spare] of this.spares) {
      if (spare.snapshotId !== snapshotId) continue;
      this.spares.delete(id);
      spare.prepared.started.control.clearCloseListeners();
      try {
        await rename(this.ctx.paths.spareDir(id), this.ctx.paths.vmDir(id));
      } catch {
        await this.kill(spare);
        return undefined;
      }
      spare.prepared.started.files = this.ctx.backend.files(this.ctx.paths.vmDir(id));
      return spare;
    }
    return undefined;
  }

  /** Starts a spare for the snapshot in the background unless it has one (or one is on its way). */
  replenish(snapshot: SnapshotRecord): void {
    if (this.closed || !this.enabled || this.starting.has(snapshot.id)) return;
    // A fork of it attaches named volumes, under the one-writer rule at its boot: a spare made
    // ahead would hold them (or lack the disks its saved devices expect).
    if (snapshot.spec.volumes?.length) return;
    if ([...this.spares.values()].some((s) => s.snapshotId === snapshot.id)) return;
    const started = this.start(snapshot)
      .catch((err: unknown) => {
        // A spare is an optimisation: the next fork restores the usual way. Say why, once.
        this.ctx.log.warn(`spare of snapshot ${snapshot.name} not started: ${(err as Error).message}`);
      })
      .finally(() => this.starting.delete(snapshot.id));
    this.starting.set(snapshot.id, started);
  }

  /** Kills the spares of a snapshot (it is about to be removed). */
  async drop(snapshotId: string): Promise<void> {
    await this.starting.get(snapshotId);
    await Promise.all([...this.spares.values()].filter((s) => s.snapshotId === snapshotId).map((s) => this.kill(s)));
  }

  /** Ends a spare that was taken (its folder is in vms/ now) but will not be used after all. */
  async discard(spare: Spare): Promise<void> {
    await this.kill(spare);
    await rm(this.ctx.paths.vmDir(spare.id), { recursive: true, force: true });
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.starting.values()]);
    await Promise.all([...this.spares.values()].map((s) => this.kill(s)));
  }

  count(): number {
    return this.spares.size;
  }

  private async start(snapshot: SnapshotRecord): Promise<void> {
    const id = newId();
    const prepared = await prepareSpare(this.ctx, id, snapshot);
    const spare: Spare = { id, snapshotId: snapshot.id, prepared, createdAt: Date.now() };
    if (this.closed || !this.ctx.stores.snapshots.get(snapshot.id)) {
      await this.kill(spare);
      return;
    }
    this.spares.set(id, spare);
    // A spare whose QEMU died is forgotten; one nobody took in time is ended.
    prepared.started.control.onClose(() => {
      if (this.spares.get(id) !== spare) return;
      // Its QEMU died before anyone took it: its namespace and addresses go with it.
      this.spares.delete(id);
      void rm(this.ctx.paths.spareDir(id), { recursive: true, force: true });
      void this.ctx.network.detach(id).then(() => this.ctx.network.forget(id)).catch(() => {});
    });
    setTimeout(() => {
      if (this.spares.get(id) === spare) void this.kill(spare);
    }, this.idleMs).unref();
    while (this.spares.size > this.max) {
      const oldest = [...this.spares.values()].sort((a, b) => a.createdAt - b.createdAt)[0]!;
      await this.kill(oldest);
    }
  }

  private async kill(spare: Spare): Promise<void> {
    this.spares.delete(spare.id);
    const { started } = spare.prepared;
    started.control.clearCloseListeners();
    await started.control.quit().catch(() => {});
    started.control.close();
    await this.ctx.backend.kill(started.pid, spare.id);
    await this.ctx.network.detach(spare.id).catch(() => {});
    this.ctx.network.forget(spare.id);
    await rm(this.ctx.paths.spareDir(spare.id), { recursive: true, force: true });
  }
}
