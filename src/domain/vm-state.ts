import { CellError, ErrorCodes } from './errors.js';

/**
 * A VM's lifecycle. Every state change goes through `assertTransition` (VmStore.setState is the
 * one writer, inside a SQLite transaction), and recovery after a crash uses the same table, so a
 * state a later feature adds (paused, unhealthy, ...) is one row here, not a search through the
 * engine.
 *
 *   created ──► starting ──► running ──► stopping ──► stopped
 *                  │  ▲       │  ▲  │        ▲              │
 *                  │  │       ▼  │  │        │              │
 *                  │  │      paused ─────────┘ (stop, rm -f)│
 *                  │  └─────────┼───────────────────────────┘  (start, restore)
 *                  └────────────┴──────────► stopped            (boot failed, crashed, snapshot, lost)
 *
 *   pause --to-disk: running ──► stopped (its snapshot) ──► suspended ──► starting (unpause: restored)
 *                                                              └──────► stopped (stop: memory let go)
 */
export const VM_STATES = ['created', 'starting', 'running', 'paused', 'stopping', 'stopped', 'suspended'] as const;
export type VmState = (typeof VM_STATES)[number];

/** Why each edge exists: the engine step that takes it. */
export const VM_TRANSITIONS: Readonly<Record<VmState, Readonly<Partial<Record<VmState, string>>>>> = {
  created: { starting: 'first boot' },
  starting: {
    running: 'the guest agent answered',
    stopping: 'removed or rolled back while booting',
    stopped: 'boot failed, or QEMU was gone after a daemon restart',
  },
  running: {
    paused: 'pause (its vCPUs stop; its QEMU and RAM stay)',
    stopping: 'stop, rm -f or restore',
    stopped: 'QEMU exited on its own, the VM was snapshotted, or it was lost across a daemon restart',
  },
  paused: {
    running: 'unpause',
    stopping: 'stop (unpaused first, for the guest to shut down) or rm -f',
    stopped: 'QEMU exited on its own, or was lost across a daemon restart',
  },
  stopping: { stopped: 'QEMU ended' },
  stopped: {
    starting: 'start, restore, or resume after a snapshot',
    suspended: 'pause --to-disk: the snapshot that ended its QEMU keeps its memory',
  },
  suspended: {
    starting: 'unpause: restored from its memory under the same id and name',
    stopped: 'stop: its saved memory is let go; start boots its disk',
  },
};

export function canTransition(from: VmState, to: VmState): boolean {
  return VM_TRANSITIONS[from][to] !== undefined;
}

/** Throws `invalid_state` unless `from -> to` is an edge of the table. */
export function assertTransition(name: string, from: VmState, to: VmState): void {
  if (canTransition(from, to)) return;
  const allowed = Object.keys(VM_TRANSITIONS[from]);
  throw new CellError(
    ErrorCodes.INVALID_STATE,
    `VM ${name} cannot go from ${from} to ${to} (from ${from} it can go to: ${allowed.join(', ') || 'nothing'})`,
    { from, to, allowed },
  );
}

/** States in which a QEMU process may exist for the VM (recovery looks for it). */
export function mayHaveMachine(state: VmState): boolean {
  return state === 'starting' || state === 'running' || state === 'paused' || state === 'stopping';
}

/** States in which the VM's machine exists and is its own (running, or paused by the user). */
export function isLive(state: VmState): boolean {
  return state === 'running' || state === 'paused';
}

/** What a VM left in `state` by a daemon that died becomes when its QEMU is gone. */
export function recoveredExitReason(state: VmState): string {
  return state === 'stopping' ? 'stopped' : 'lost';
}
