import { totalmem } from 'node:os';
import { rename, rm } from 'node:fs/promises';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId } from '../domain/ids.js';
import type { PoolSetting, PoolStatus } from '../domain/pool.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import type { EngineContext } from './context.js';
import type { PreparedRestore } from './live-machines.js';
import { prepareSpare } from './machine-spec.js';
import { readProcess } from './proc-stats.js';

/** A QEMU restored from a snapshot and paused, waiting for a fork. */
export interface Spare {
  /** The id the VM that takes it will have (its directory and QEMU name are made for it). */
  id: string;
  snapshotId: string;
  prepared: PreparedRestore;
  createdAt: number;
  /** It ran a fork's first steps and was paused again (docs/pools.md); else it waits at the snapshot point. */
  warm: boolean;
  /** Kept for a pool the user set; else the one automatic spare of a recently forked snapshot. */
  pooled: boolean;
}

/** How many automatic spares are kept at most (the oldest goes first), and for how long. */
const MAX_SPARES = 4;
const IDLE_MS = 10 * 60_000;

export interface SparePoolOptions {
  /** Automatic spares; default: unless CELL_SPARES=0. Pools a user set are kept either way. */
  enabled?: boolean;
  /** Automatic spares kept at most (the oldest goes first). */
  max?: number;
  /** An automatic spare nobody took for this long is ended. */
  idleMs?: number;
}

export function sparesEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.CELL_SPARES !== '0';
}

/** What every pool holds together, for `cell info`. */
export interface PoolsSummary {
  /** Snapshots with a pool. */
  pools: number;
  /** Spares of pools, ready. */
  ready: number;
  /** Their PSS, summed, and the cap on it (config.json poolMemoryMaxBytes). */
  memoryBytes: number;
  memoryMaxBytes: number;
}

/**
 * Spares: QEMUs restored from a snapshot and paused, so a fork that takes one only resumes it
 * (starting QEMU and loading the device state is most of a fork before the guest runs).
 *
 * Two kinds. Automatic: every fork of a snapshot starts one spare for its next fork; at most four,
 * ended after ten idle minutes, CELL_SPARES=0 turns them off. Pools (docs/pools.md): a user sets a
 * size (and whether warm) per snapshot; the pool is refilled in the background, one spare at a
 * time at a tenth of a VM's CPU share, while the spares' memory stays under the cap; the setting
 * is in the database, so a new celld refills pools at start-up.
 *
 * Spares have no VM record: they die with celld (`closeAll`), when their snapshot is removed
 * (`drop`); a celld that crashed leaves their directories, which the next one sweeps (recovery.ts).
 */
export class SparePool {
  private readonly spares = new Map<string, Spare>();
  /** Automatic spares on their way, by snapshot id: closeAll waits for them (they end themselves). */
  private readonly starting = new Map<string, Promise<void>>();
  /** The pool spare being made now, by snapshot id (the refill makes one at a time). */
  private readonly filling = new Map<string, Promise<void>>();
  /** Why a pool's last spare could not be made; cleared when its pool is set again or it is forked. */
  private readonly failures = new Map<string, string>();
  private refilling: Promise<void> | null = null;
  private refillAgain = false;
  private capNoted = false;
  private closed = false;

  private readonly enabled: boolean;
  private readonly max: number;
  private readonly idleMs: number;
  readonly memoryMaxBytes: number;

  constructor(
    private readonly ctx: EngineContext,
    opts: SparePoolOptions = {},
  ) {
    this.enabled = opts.enabled ?? sparesEnabled();
    this.max = opts.max ?? MAX_SPARES;
    this.idleMs = opts.idleMs ?? IDLE_MS;
    this.memoryMaxBytes = ctx.config.poolMemoryMaxBytes ?? Math.floor(totalmem() / 4);
  }

  /**
   * Takes a spare of a snapshot, if one is ready (a warm one first), and moves its folder to
   * vms/<id>/ where the VM record will point. QEMU holds its files open and its sockets move with
   * the folder; it gets the usual CPU share back.
   */
  async take(snapshotId: string): Promise<Spare | undefined> {
    const candidates = [...this.spares.values()].filter((s) => s.snapshotId === snapshotId).sort((a, b) => Number(b.warm) - Number(a.warm));
    const spare = candidates[0];
    if (!spare) return undefined;
    this.spares.delete(spare.id);
    spare.prepared.started.control.clearCloseListeners();
    try {
      await rename(this.ctx.paths.spareDir(spare.id), this.ctx.paths.vmDir(spare.id));
    } catch {
      await this.kill(spare);
      return undefined;
    }
    spare.prepared.started.files = this.ctx.backend.files(this.ctx.paths.vmDir(spare.id));
    this.ctx.backend.foreground(spare.prepared.started.pid);
    return spare;
  }

  /**
   * After forks of a snapshot: its pool refills, or (without one) an automatic spare is started
   * for its next fork unless it has one. Both in the background.
   */
  replenish(snapshot: SnapshotRecord): void {
    if (this.closed) return;
    this.failures.delete(snapshot.id);
    if (this.ctx.stores.pools.get(snapshot.id)) {
      this.refill();
      return;
    }
    if (!this.enabled || this.starting.has(snapshot.id)) return;
    // A fork of it attaches named volumes, under the one-writer rule at its boot: a spare made
    // ahead would hold them (or lack the disks its saved devices expect).
    if (snapshot.spec.volumes?.length) return;
    if ([...this.spares.values()].some((s) => s.snapshotId === snapshot.id)) return;
    const started = this.start(snapshot, { warm: false, pooled: false })
      .catch((err: unknown) => {
        // A spare is an optimisation: the next fork restores the usual way. Say why, once.
        this.ctx.log.warn(`spare of snapshot ${snapshot.name} not started: ${(err as Error).message}`);
      })
      .finally(() => this.starting.delete(snapshot.id));
    this.starting.set(snapshot.id, started);
  }

  /**
   * Sets a snapshot's pool (size 0 removes it): spares beyond the size, or of the other kind
   * (warm, exact), end now; the rest are made in the background.
   */
  async setPool(snapshot: SnapshotRecord, setting: PoolSetting): Promise<void> {
    if (setting.size > 0 && snapshot.spec.volumes?.length) {
      throw new CellError(
        ErrorCodes.CONFLICT,
        `snapshot ${snapshot.name} mounts volumes: its forks attach them when they start (one writer at a time), so no spare can be made ahead (docs/volumes.md)`,
      );
    }
    this.ctx.stores.pools.set(snapshot.id, setting);
    this.failures.delete(snapshot.id);
    this.capNoted = false;
    const mine = [...this.spares.values()].filter((s) => s.snapshotId === snapshot.id);
    const keep = mine.filter((s) => s.pooled && s.warm === setting.warm).slice(0, setting.size);
    await Promise.all(mine.filter((s) => !keep.includes(s)).map((s) => this.kill(s)));
    this.refill();
  }

  /** A snapshot's pool as it is now; undefined when it has none. */
  async status(snapshotId: string): Promise<PoolStatus | undefined> {
    const setting = this.ctx.stores.pools.get(snapshotId);
    if (!setting) return undefined;
    const mine = [...this.spares.values()].filter((s) => s.snapshotId === snapshotId && s.pooled);
    const memoryBytes = await this.memoryOf(mine);
    const ready = mine.length;
    const starting = this.filling.has(snapshotId) ? 1 : 0;
    const failure = this.failures.get(snapshotId);
    const held =
      ready + starting >= setting.size
        ? undefined
        : failure
          ? `its last spare failed: ${failure}`
          : this.capNoted
            ? `pool memory is at its cap (${formatMib(this.memoryMaxBytes)}: poolMemoryMaxBytes in config.json)`
            : undefined;
    return { size: setting.size, warm: setting.warm, ready, starting, memoryBytes, ...(held ? { held } : {}) };
  }

  async summary(): Promise<PoolsSummary> {
    const pooled = [...this.spares.values()].filter((s) => s.pooled);
    return { pools: this.ctx.stores.pools.list().length, ready: pooled.length, memoryBytes: await this.memoryOf([...this.spares.values()]), memoryMaxBytes: this.memoryMaxBytes };
  }

  /** Starts refilling the pools (celld's start-up: the settings outlive celld, the spares do not). */
  resumePools(): void {
    if (this.ctx.stores.pools.list().length > 0) this.refill();
  }

  /** Kills the spares of a snapshot (it is about to be removed). */
  async drop(snapshotId: string): Promise<void> {
    // Its pool setting goes first, so the refill makes no more for it (the row would go with the snapshot's).
    this.ctx.stores.pools.set(snapshotId, { size: 0, warm: false });
    await Promise.all([this.starting.get(snapshotId), this.filling.get(snapshotId)]);
    await Promise.all([...this.spares.values()].filter((s) => s.snapshotId === snapshotId).map((s) => this.kill(s)));
  }

  /** Ends a spare that was taken (its folder is in vms/ now) but will not be used after all. */
  async discard(spare: Spare): Promise<void> {
    await this.kill(spare);
    await rm(this.ctx.paths.vmDir(spare.id), { recursive: true, force: true });
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.starting.values(), this.refilling]);
    await Promise.all([...this.spares.values()].map((s) => this.kill(s)));
  }

  /** Every spare, automatic or pooled, ready now. */
  count(): number {
    return this.spares.size;
  }

  /**
   * Makes the pools' missing spares, one at a time (a refill must not compete with the forks it
   * serves: one QEMU restoring at a time, at a background CPU share), until every pool is full, a
   * pool's spare fails (it waits for its next fork or setting), or the memory cap is reached.
   */
  private refill(): void {
    if (this.closed) return;
    if (this.refilling) {
      this.refillAgain = true;
      return;
    }
    this.refilling = (async () => {
      do {
        this.refillAgain = false;
        for (;;) {
          if (this.closed) return;
          const next = this.nextToFill();
          if (!next) break;
          if (await this.overCap()) {
            if (!this.capNoted) this.ctx.log.warn(`pools hold ${formatMib(await this.memoryOf([...this.spares.values()]))}, their cap: no more spares until some are taken or the cap is raised`);
            this.capNoted = true;
            return;
          }
          this.capNoted = false;
          const made = this.start(next.snapshot, { warm: next.setting.warm, pooled: true }).catch((err: unknown) => {
            this.failures.set(next.snapshot.id, (err as Error).message);
            this.ctx.log.warn(`pool of snapshot ${next.snapshot.name}: a spare failed: ${(err as Error).message}`);
          });
          this.filling.set(next.snapshot.id, made);
          await made;
          this.filling.delete(next.snapshot.id);
        }
      } while (this.refillAgain && !this.closed);
    })().finally(() => {
      this.refilling = null;
    });
  }

  /** The pool most short of spares (none failing), with its snapshot. */
  private nextToFill(): { snapshot: SnapshotRecord; setting: PoolSetting } | undefined {
    let best: { snapshot: SnapshotRecord; setting: PoolSetting; missing: number } | undefined;
    for (const { snapshotId, pool } of this.ctx.stores.pools.list()) {
      if (this.failures.has(snapshotId)) continue;
      const have = [...this.spares.values()].filter((s) => s.snapshotId === snapshotId && s.pooled).length;
      const missing = pool.size - have;
      if (missing <= 0) continue;
      const snapshot = this.ctx.stores.snapshots.get(snapshotId);
      if (!snapshot || snapshot.spec.volumes?.length) continue;
      if (!best || missing > best.missing) best = { snapshot, setting: pool, missing };
    }
    return best;
  }

  /** Whether one more spare would take the spares' memory past the cap (judged by the ones there are). */
  private async overCap(): Promise<boolean> {
    const all = [...this.spares.values()];
    const used = await this.memoryOf(all);
    const perSpare = all.length > 0 ? used / all.length : 0;
    return used + perSpare > this.memoryMaxBytes;
  }

  /** PSS of the spares' QEMUs: their private pages and their share of the snapshot's RAM and code. */
  private async memoryOf(spares: Spare[]): Promise<number> {
    const samples = await Promise.all(spares.map((s) => readProcess(s.prepared.started.pid)));
    return samples.reduce((sum, sample) => sum + (sample?.memory?.pssBytes ?? 0), 0);
  }

  private async start(snapshot: SnapshotRecord, kind: { warm: boolean; pooled: boolean }): Promise<void> {
    const id = newId();
    const prepared = await prepareSpare(this.ctx, id, snapshot, { warm: kind.warm });
    const spare: Spare = { id, snapshotId: snapshot.id, prepared, createdAt: Date.now(), ...kind };
    const wanted = kind.pooled ? this.ctx.stores.pools.get(snapshot.id) : undefined;
    const stillWanted = kind.pooled ? wanted !== undefined && wanted.warm === kind.warm : true;
    if (this.closed || !this.ctx.stores.snapshots.get(snapshot.id) || !stillWanted) {
      await this.kill(spare);
      return;
    }
    this.spares.set(id, spare);
    // A spare whose QEMU died is forgotten (its pool refills); an automatic one nobody took in time is ended.
    prepared.started.control.onClose(() => {
      if (this.spares.get(id) !== spare) return;
      // Its QEMU died before anyone took it: its namespace and addresses go with it.
      this.spares.delete(id);
      prepared.agent?.close();
      void rm(this.ctx.paths.spareDir(id), { recursive: true, force: true });
      void this.ctx.network.detach(id).then(() => this.ctx.network.forget(id)).catch(() => {});
      if (spare.pooled) this.refill();
    });
    if (kind.pooled) return;
    setTimeout(() => {
      if (this.spares.get(id) === spare) void this.kill(spare);
    }, this.idleMs).unref();
    const automatic = () => [...this.spares.values()].filter((s) => !s.pooled);
    while (automatic().length > this.max) {
      const oldest = automatic().sort((a, b) => a.createdAt - b.createdAt)[0]!;
      await this.kill(oldest);
    }
  }

  private async kill(spare: Spare): Promise<void> {
    this.spares.delete(spare.id);
    const { started, agent } = spare.prepared;
    started.control.clearCloseListeners();
    agent?.close();
    await started.control.quit().catch(() => {});
    started.control.close();
    await this.ctx.backend.kill(started.pid, spare.id);
    await this.ctx.network.detach(spare.id).catch(() => {});
    this.ctx.network.forget(spare.id);
    await rm(this.ctx.paths.spareDir(spare.id), { recursive: true, force: true });
  }
}

function formatMib(bytes: number): string {
  return bytes < 2 ** 20 ? `${bytes} B` : `${Math.round(bytes / 2 ** 20)} MiB`;
}
