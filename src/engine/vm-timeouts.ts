import { dueTimeout, type TimeoutVerdict } from '../domain/timeouts.js';
import { isLive } from '../domain/vm-state.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import type { Vms } from './vms.js';

/** How often the limits are checked: a TTL or idle timeout ends at most this late. */
const TICK_MS = 1000;
/** How long a VM whose limit could not be enforced is left alone. */
const BACKOFF_MS = 60_000;

/**
 * Enforces `--ttl` and `--idle-timeout` (domain/timeouts.ts): once a second it looks at the VMs
 * that run with a limit and stops (removes, with `--rm`) or pauses those whose time is up. The
 * limits live in the VM's spec and its start time in its record, so a restarted celld enforces
 * them at its first tick, a TTL that ran out while it was down included. Idle time is measured
 * from this celld's start at the earliest (vm-activity.ts).
 */
export class TimeoutMonitor {
  private timer: NodeJS.Timeout | undefined;
  private readonly acting = new Set<string>();
  /** VMs whose last action failed, until when they are left alone (no warning every second). */
  private readonly backoff = new Map<string, number>();
  private readonly openedAt = Date.now();

  constructor(
    private readonly ctx: Pick<EngineContext, 'stores' | 'log' | 'network'>,
    private readonly vms: Vms,
    /** `pause --to-disk` (vm-suspend.ts). */
    private readonly suspend: (id: string) => Promise<unknown>,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
    this.tick();
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** What is due for the VM now. A paused VM is not idle (it is paused already), but its TTL runs on. */
  private due(vm: VmRecord, now: number): TimeoutVerdict {
    const busy = vm.state === 'paused' || this.vms.activity.busy(vm.id);
    return dueTimeout(vm.spec.timeouts, vm.startedAt, busy ? now : this.lastActive(vm), now);
  }

  /** When VM `id` was last used: an exec, a file copy or a published port's traffic, its start, or this celld's. */
  private lastActive(vm: VmRecord): number {
    const started = Date.parse(vm.startedAt ?? '') || 0;
    return Math.max(started, this.openedAt, this.vms.activity.lastAt(vm.id) ?? 0, this.ctx.network.lastPortTraffic(vm.id) ?? 0);
  }

  private tick(): void {
    try {
      this.check(Date.now());
    } catch (err) {
      // A tick must never end celld (it runs from a timer): the next one tries again.
      this.ctx.log.warn(`checking VMs' time limits failed: ${(err as Error).message}`);
    }
  }

  private check(now: number): void {
    for (const vm of this.ctx.stores.vms.list()) {
      if (!vm.spec.timeouts || this.acting.has(vm.id) || (this.backoff.get(vm.id) ?? 0) > now) continue;
      if (!isLive(vm.state)) continue;
      if (this.due(vm, now)) this.act(vm);
    }
  }

  private act(vm: VmRecord): void {
    this.acting.add(vm.id);
    const work = async () => {
      // Decided again on a fresh record: a `cell update` or a restart since the tick may have moved the limit.
      const fresh = this.ctx.stores.vms.get(vm.id);
      const verdict = fresh && fresh.startedAt === vm.startedAt ? this.due(fresh, Date.now()) : undefined;
      if (!verdict) return;
      if (verdict.act === 'idle' && verdict.action !== 'stop') {
        this.ctx.log.info(`VM ${vm.name} idle for ${vm.spec.timeouts?.idleTimeoutMs} ms: pausing it${verdict.action === 'pause-to-disk' ? ' to disk' : ''}`);
        await (verdict.action === 'pause-to-disk' ? this.suspend(vm.id) : this.vms.pause(vm.id));
        return;
      }
      const reason = verdict.act === 'ttl' ? 'ttl' : 'idle';
      this.ctx.log.info(`VM ${vm.name}: ${reason === 'ttl' ? 'its TTL ran out' : 'idle too long'}, stopping it${vm.spec.autoRemove ? ' and removing it (--rm)' : ''}`);
      await this.vms.stop(vm.id, 10, reason);
      if (vm.spec.autoRemove) await this.vms.remove(vm.id, true);
    };
    void work()
      .catch((err: unknown) => {
        this.backoff.set(vm.id, Date.now() + BACKOFF_MS);
        if (this.timer) this.ctx.log.warn(`enforcing the time limits of VM ${vm.name} failed (tried again in ${BACKOFF_MS / 1000} s): ${(err as Error).message}`);
      })
      .finally(() => this.acting.delete(vm.id));
  }
}
