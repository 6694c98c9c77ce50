import type { VmRecord } from './vm.js';
import { matchesLabels } from './labels.js';
import { CellError, ErrorCodes } from './errors.js';

/**
 * What happened to a VM or snapshot, as `docker events` reports it: `vm` create, start, pause,
 * unpause, stop (asked to), die (with its exit code and reason), snapshot (its RAM was saved; it
 * goes on in a new QEMU: a `start` follows), health_status, update, oom (the guest's OOM killer
 * ended a process: pid, process; domain/oom.ts), destroy; `snapshot` create, fork
 * (a VM was made from it), delete. Attributes are strings, the actor's labels among them.
 */
export type EventType = 'vm' | 'snapshot';

export interface CellEvent {
  /** Increases by one per event on this host; `--since` and resumed streams count on it. */
  seq: number;
  time: string;
  type: EventType;
  action: string;
  actor: { id: string; name: string; labels?: Record<string, string> };
  attributes: Record<string, string>;
}

export type NewEvent = Omit<CellEvent, 'seq' | 'time'>;

export const EVENT_FILTER_KEYS = ['vm', 'snapshot', 'type', 'event', 'label'] as const;

/** The event a VM's state change makes, if any (`starting` and a fresh record make none). */
export function transitionEvent(before: VmRecord, after: VmRecord): NewEvent | null {
  const vm = (action: string, attributes: Record<string, string> = {}): NewEvent => ({ type: 'vm', action, actor: vmActor(after), attributes });
  switch (after.state) {
    case 'running':
      return before.state === 'paused' ? vm('unpause') : vm('start', after.accelerator ? { accelerator: after.accelerator } : {});
    case 'paused':
      return vm('pause');
    case 'suspended':
      return vm('pause', { toDisk: 'true', ...(after.baseSnapshot ? { snapshot: after.baseSnapshot } : {}) });
    case 'stopping':
      return vm('stop');
    case 'stopped': {
      const exit = after.exit;
      if (exit?.reason === 'snapshot') return vm('snapshot', after.baseSnapshot ? { snapshot: after.baseSnapshot } : {});
      const attributes: Record<string, string> = { reason: exit?.reason ?? 'stopped' };
      if (exit?.exitCode !== null && exit?.exitCode !== undefined) attributes.exitCode = String(exit.exitCode);
      if (exit?.signal) attributes.signal = String(exit.signal);
      return vm('die', attributes);
    }
    default:
      return null;
  }
}

export function vmActor(vm: Pick<VmRecord, 'id' | 'name' | 'spec'>): CellEvent['actor'] {
  return { id: vm.id, name: vm.name, ...(vm.spec.labels ? { labels: vm.spec.labels } : {}) };
}

/** `--filter` items of `cell events` (Docker's: vm=, snapshot=, type=, event=, label=); all keys must match, values of one key are alternatives. */
export interface EventFilter {
  vm: string[];
  snapshot: string[];
  type: string[];
  event: string[];
  label: string[];
}

export function parseEventFilters(items: readonly string[]): EventFilter {
  const filter: EventFilter = { vm: [], snapshot: [], type: [], event: [], label: [] };
  for (const item of items) {
    const eq = item.indexOf('=');
    const key = item.slice(0, Math.max(eq, 0)) as keyof EventFilter;
    const value = item.slice(eq + 1);
    if (eq < 1 || !(EVENT_FILTER_KEYS as readonly string[]).includes(key) || value === '') {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--filter ${JSON.stringify(item)}: use KEY=VALUE with KEY one of ${EVENT_FILTER_KEYS.join(', ')} (as in vm=web, event=die, label=team=ml)`);
    }
    if (key === 'type' && value !== 'vm' && value !== 'snapshot') throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--filter type=${value}: a type is vm or snapshot`);
    filter[key].push(value);
  }
  return filter;
}

/** A VM or snapshot named by name, full id or id prefix (at least 4 characters). */
function names(actor: CellEvent['actor'], ref: string): boolean {
  return actor.name === ref || actor.id === ref || (ref.length >= 4 && actor.id.startsWith(ref));
}

export function matchesEvent(event: CellEvent, filter: EventFilter): boolean {
  const any = (values: string[], test: (v: string) => boolean) => values.length === 0 || values.some(test);
  // A fork's snapshot event also names the VM it made, and a VM's snapshot event the snapshot.
  const vmOf = (ref: string) =>
    (event.type === 'vm' && names(event.actor, ref)) || (event.type === 'snapshot' && (event.attributes.vm === ref || event.attributes.vmName === ref || (ref.length >= 4 && !!event.attributes.vm?.startsWith(ref))));
  const snapshotOf = (ref: string) =>
    (event.type === 'snapshot' && names(event.actor, ref)) || (event.type === 'vm' && (event.attributes.snapshotName === ref || event.attributes.snapshot === ref || (ref.length >= 4 && !!event.attributes.snapshot?.startsWith(ref))));
  return (
    any(filter.type, (t) => event.type === t) &&
    any(filter.event, (a) => event.action === a) &&
    any(filter.vm, vmOf) &&
    any(filter.snapshot, snapshotOf) &&
    (filter.label.length === 0 || matchesLabels(event.actor.labels, filter.label))
  );
}
