import { EventEmitter } from 'node:events';
import { refCondition } from '../domain/ids.js';
import { GUEST_ADDRESS } from '../domain/network.js';
import type { Db } from './database.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { VmExit, VmRecord, VmSpec, VmState } from '../domain/vm.js';
import type { HealthState } from '../domain/health.js';
import { assertTransition, isLive } from '../domain/vm-state.js';
import { NetworkStore } from './lease-store.js';
import { EventStore } from './event-store.js';
import { transitionEvent, vmActor } from '../domain/events.js';

interface VmRow {
  id: string;
  name: string;
  state: string;
  spec: string;
  created_at: string;
  started_at: string | null;
  stopped_at: string | null;
  pid: number | null;
  accelerator: string | null;
  exit: string | null;
  base_snapshot: string | null;
  health: string | null;
}

const SELECT = 'SELECT * FROM vms';

function fromRow(row: VmRow): VmRecord {
  return {
    id: row.id,
    name: row.name,
    state: row.state as VmState,
    spec: JSON.parse(row.spec) as VmSpec,
    createdAt: row.created_at,
    startedAt: row.started_at,
    stoppedAt: row.stopped_at,
    pid: row.pid,
    accelerator: row.accelerator,
    exit: row.exit ? (JSON.parse(row.exit) as VmExit) : null,
    baseSnapshot: row.base_snapshot,
    health: row.health ? (JSON.parse(row.health) as HealthState) : null,
  };
}

/** Fields that change without a state change. The state itself changes only through `setState`. */
export type VmPatch = Partial<Pick<VmRecord, 'startedAt' | 'stoppedAt' | 'pid' | 'accelerator' | 'exit' | 'baseSnapshot' | 'health'>>;

/** The columns a new record is inserted with: its network view comes from the leases table, its health from probes. */
function withoutRecordOnly(vm: VmRecord): Omit<VmRecord, 'network' | 'health' | 'expiresAt'> {
  const { network: _, health: __, expiresAt: ___, ...rest } = vm;
  return rest;
}

/** VM records. Every state change is written here, with its event, before the engine acts on it. */
/**
 * VM records. It emits `changed` (with the VM's id) after each write of a record, once the
 * caller's transaction is over: waiters (engine/vm-wait.ts) hear of changes that are no event,
 * such as a detached main command's exit.
 */
export class VmStore extends EventEmitter {
  private readonly networks: NetworkStore;

  constructor(
    private readonly db: Db,
    private readonly events = new EventStore(db),
  ) {
    super();
    this.setMaxListeners(0);
    this.networks = new NetworkStore(db);
  }

  /** Its addresses (from its leases) and, while it runs, the ports it publishes. */
  private withNetwork(vm: VmRecord): VmRecord {
    const leases = this.networks.leases(vm.id);
    if (leases.length === 0) {
      // A user-mode NIC (engine/user-networking.ts) leases no address but records its ports (maybe
      // none) once it runs: it is at the guest's own address, alone in its QEMU's network.
      const ports = this.networks.recordedPorts(vm.id);
      if (!ports || !vm.spec.networks?.length) return { ...vm, network: null };
      return {
        ...vm,
        network: { networks: vm.spec.networks.map((name) => ({ name, address: GUEST_ADDRESS })), ports: isLive(vm.state) ? ports : [], egressDenied: 0 },
      };
    }
    return {
      ...vm,
      network: {
        networks: leases.map((l) => ({ name: l.network, address: l.address })),
        ports: isLive(vm.state) ? this.networks.ports(vm.id) : [],
        egressDenied: this.networks.denied(vm.id),
      },
    };
  }

  insert(vm: VmRecord): void {
    try {
      this.db.transaction(() => {
        this.db
          .prepare(
            `INSERT INTO vms (id, name, state, spec, created_at, started_at, stopped_at, pid, accelerator, exit, base_snapshot)
             VALUES (@id, @name, @state, @spec, @createdAt, @startedAt, @stoppedAt, @pid, @accelerator, @exit, @baseSnapshot)`,
          )
          .run({ ...withoutRecordOnly(vm), spec: JSON.stringify(vm.spec), exit: vm.exit ? JSON.stringify(vm.exit) : null });
        const snapshot = vm.baseSnapshot ? this.snapshotRow(vm.baseSnapshot) : undefined;
        const from: Record<string, string> = vm.baseSnapshot ? { snapshot: vm.baseSnapshot, snapshotName: snapshot?.name ?? vm.baseSnapshot } : {};
        this.events.record({ type: 'vm', action: 'create', actor: vmActor(vm), attributes: { image: vm.spec.image, ...from } });
        if (vm.baseSnapshot) {
          // Made from a snapshot (fork, run --from, a build step): the snapshot's event too.
          const labels = snapshot ? (JSON.parse(snapshot.spec) as VmSpec).labels : undefined;
          this.events.record({
            type: 'snapshot',
            action: 'fork',
            actor: { id: vm.baseSnapshot, name: from.snapshotName!, ...(labels ? { labels } : {}) },
            attributes: { vm: vm.id, vmName: vm.name },
          });
        }
      })();
    } catch (err) {
      if (err instanceof Error && /UNIQUE constraint failed: vms.name/.test(err.message)) {
        throw new CellError(ErrorCodes.CONFLICT, `the name "${vm.name}" is already in use by another VM`);
      }
      throw err;
    }
  }

  get(id: string): VmRecord | undefined {
    const row = this.db.prepare(`${SELECT} WHERE id = ?`).get(id) as VmRow | undefined;
    return row ? this.withNetwork(fromRow(row)) : undefined;
  }

  /** The VMs a reference could mean (an id, a name, an id prefix): engine resolves one of them. */
  matching(ref: string): VmRecord[] {
    const { where, params } = refCondition(ref);
    return (this.db.prepare(`${SELECT} WHERE ${where} ORDER BY created_at, id`).all(params) as VmRow[]).map((r) => this.withNetwork(fromRow(r)));
  }

  list(): VmRecord[] {
    return (this.db.prepare(`${SELECT} ORDER BY created_at, id`).all() as VmRow[]).map((r) => this.withNetwork(fromRow(r)));
  }

  nameExists(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM vms WHERE name = ?').get(name) !== undefined;
  }

  /**
   * `cell update`: its time limits change (domain/timeouts.ts), with an `update` event in the same
   * transaction; `change` gets the current ones and returns the new (it may throw: nothing changes).
   */
  setTimeouts(id: string, change: (current: VmSpec['timeouts']) => VmSpec['timeouts']): VmRecord {
    return this.db.transaction(() => {
      const current = this.get(id);
      if (!current) throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${id}`);
      const { timeouts: _, ...rest } = current.spec;
      const timeouts = change(current.spec.timeouts);
      this.db.prepare('UPDATE vms SET spec = ? WHERE id = ?').run(JSON.stringify({ ...rest, ...(timeouts ? { timeouts } : {}) }), id);
      const next = this.get(id)!;
      queueMicrotask(() => this.emit('changed', id));
      const attributes: Record<string, string> = {};
      if (timeouts?.ttlMs) attributes.ttlMs = String(timeouts.ttlMs);
      if (timeouts?.idleTimeoutMs) attributes.idleTimeoutMs = String(timeouts.idleTimeoutMs);
      this.recordEvent(next, 'update', attributes);
      return next;
    })();
  }

  /** A VM's networks change (connect, disconnect). */
  setNetworks(id: string, networks: string[]): VmRecord {
    const current = this.get(id);
    if (!current) throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${id}`);
    this.db.prepare('UPDATE vms SET spec = ? WHERE id = ?').run(JSON.stringify({ ...current.spec, networks }), id);
    return this.get(id)!;
  }

  update(id: string, patch: VmPatch): VmRecord {
    const current = this.get(id);
    if (!current) throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${id}`);
    return this.write({ ...current, ...patch });
  }

  /**
   * The one writer of a VM's state: checks the edge against the lifecycle table and writes the
   * state with `patch` in one transaction (the caller acts only after this returned). An illegal
   * edge throws `invalid_state` and writes nothing.
   */
  setState(id: string, to: VmState, patch: VmPatch = {}): VmRecord {
    return this.db.transaction(() => {
      const current = this.get(id);
      if (!current) throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${id}`);
      assertTransition(current.name, current.state, to);
      const next = this.write({ ...current, ...patch, state: to });
      const event = transitionEvent(current, next);
      if (event?.attributes.snapshot) event.attributes.snapshotName = this.snapshotRow(event.attributes.snapshot)?.name ?? event.attributes.snapshot;
      if (event) this.events.record(event);
      return next;
    })();
  }

  private write(next: VmRecord): VmRecord {
    queueMicrotask(() => this.emit('changed', next.id));
    this.db
      .prepare(
        `UPDATE vms SET state = @state, started_at = @startedAt, stopped_at = @stoppedAt, pid = @pid,
           accelerator = @accelerator, exit = @exit, base_snapshot = @baseSnapshot, health = @health WHERE id = @id`,
      )
      .run({
        id: next.id,
        state: next.state,
        startedAt: next.startedAt,
        stoppedAt: next.stoppedAt,
        pid: next.pid,
        accelerator: next.accelerator,
        exit: next.exit ? JSON.stringify(next.exit) : null,
        baseSnapshot: next.baseSnapshot,
        health: next.health ? JSON.stringify(next.health) : null,
      });
    return next;
  }

  delete(id: string): void {
    this.db.transaction(() => {
      const vm = this.get(id);
      if (!vm) return;
      this.db.prepare('DELETE FROM vms WHERE id = ?').run(id);
      this.events.record({ type: 'vm', action: 'destroy', actor: vmActor(vm), attributes: {} });
      queueMicrotask(() => this.emit('changed', id));
    })();
  }

  /** For events: the name a snapshot has now (its row is the snapshot store's). */
  private snapshotRow(id: string): { name: string; spec: string } | undefined {
    return this.db.prepare('SELECT name, spec FROM snapshots WHERE id = ?').get(id) as { name: string; spec: string } | undefined;
  }

  /**
   * A probe's result, written only while the VM is running (a probe that ended with its VM says
   * nothing); a change of status is a `health_status` event in the same transaction.
   */
  setHealth(id: string, health: HealthState): VmRecord | undefined {
    return this.db.transaction(() => {
      const current = this.get(id);
      if (!current || current.state !== 'running') return undefined;
      const next = this.write({ ...current, health });
      if (current.health?.status !== health.status) this.recordEvent(next, 'health_status', { health_status: health.status });
      return next;
    })();
  }

  /** An event of a VM that is not a state change (health_status, update). */
  recordEvent(vm: VmRecord, action: string, attributes: Record<string, string> = {}): void {
    this.events.record({ type: 'vm', action, actor: vmActor(vm), attributes });
  }

  /** VMs whose disk overlay sits on this snapshot's layer. */
  onSnapshot(snapshotId: string): VmRecord[] {
    return (this.db.prepare(`${SELECT} WHERE base_snapshot = ?`).all(snapshotId) as VmRow[]).map((r) => this.withNetwork(fromRow(r)));
  }

  countByState(): Record<string, number> {
    const rows = this.db.prepare('SELECT state, COUNT(*) AS n FROM vms GROUP BY state').all() as { state: string; n: number }[];
    return Object.fromEntries(rows.map((r) => [r.state, r.n]));
  }
}
