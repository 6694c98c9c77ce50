import { CellError, ErrorCodes } from '../domain/errors.js';
import { formatDuration } from '../domain/duration.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineStores } from './context.js';

/** `cell wait`: until the VM's main command has exited or the VM stopped (docker wait), or until its health check passed. */
export type WaitCondition = 'stopped' | 'healthy';

export interface WaitOptions {
  until: WaitCondition;
  /** Give up after this long (`timeout`); absent: wait for as long as it takes. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Each change of the VM's health while waiting for `healthy`. */
  onHealth?: (vm: VmRecord) => void;
}

/**
 * Waits on the VM's record, woken by each write of a VM record, so it never polls and never
 * misses a change that happened while it looked.
 */
export async function waitForVm(stores: Pick<EngineStores, 'vms'>, id: string, opts: WaitOptions): Promise<VmRecord> {
  let wake: () => void = () => {};
  const poke = () => wake();
  stores.vms.on('changed', poke);
  opts.signal?.addEventListener('abort', poke);
  const deadline = opts.timeoutMs === undefined ? undefined : Date.now() + opts.timeoutMs;
  const timer = deadline === undefined ? undefined : setTimeout(poke, opts.timeoutMs);
  let last: VmRecord | undefined;
  try {
    for (;;) {
      const woken = new Promise<void>((resolve) => (wake = resolve));
      const vm = stores.vms.get(id);
      if (!vm) {
        // `run --rm`: removed right after it stopped; its last record has the exit.
        if (last && opts.until === 'stopped' && (last.state === 'stopped' || last.exit)) return last;
        throw new CellError(ErrorCodes.NOT_FOUND, `VM ${last?.name ?? id} was removed while it was waited for`);
      }
      if (opts.until === 'healthy' && last?.health?.status !== vm.health?.status && vm.health) opts.onHealth?.(vm);
      last = vm;
      const done = settled(vm, opts.until);
      if (done) return done;
      if (opts.signal?.aborted) throw new CellError(ErrorCodes.CANCELLED, `stopped waiting for VM ${vm.name}`);
      if (deadline !== undefined && Date.now() >= deadline) throw timedOut(vm, opts.until, opts.timeoutMs!);
      await woken;
    }
  } finally {
    clearTimeout(timer);
    stores.vms.off('changed', poke);
    opts.signal?.removeEventListener('abort', poke);
  }
}

/** The VM when the wait is over; throws when it can never be (no health check, stopped before healthy). */
function settled(vm: VmRecord, until: WaitCondition): VmRecord | undefined {
  // A detached VM runs on after its main command: that command's exit is what docker wait reports.
  if (until === 'stopped') return vm.state === 'stopped' || (vm.exit && vm.spec.cmd.length > 0) ? vm : undefined;
  if (!vm.spec.health) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `VM ${vm.name} has no health check to wait for (give one with cell run --health-cmd)`);
  }
  if (vm.state === 'running' && vm.health?.status === 'healthy') return vm;
  if (vm.state === 'stopped') {
    const exit = vm.exit?.exitCode !== null && vm.exit?.exitCode !== undefined ? ` (exit code ${vm.exit.exitCode})` : '';
    throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} stopped${exit} before it was healthy`);
  }
  return undefined;
}

function timedOut(vm: VmRecord, until: WaitCondition, timeoutMs: number): CellError {
  const within = formatDuration(timeoutMs);
  if (until === 'stopped') return new CellError(ErrorCodes.TIMEOUT, `VM ${vm.name} did not stop within ${within} (it is ${vm.state})`);
  const probe = vm.health?.log.at(-1);
  const last = probe ? `; last check exited ${probe.exitCode}${probe.output ? `: ${probe.output.trim().split('\n').slice(-2).join(' | ').slice(0, 300)}` : ''}` : '; no check has run yet';
  const status = vm.state === 'running' ? (vm.health?.status ?? 'starting') : vm.state;
  return new CellError(ErrorCodes.TIMEOUT, `VM ${vm.name} is not healthy after ${within} (${status}${last})`, { health: vm.health ?? null });
}
