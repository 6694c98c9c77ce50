import { setTimeout as sleep } from 'node:timers/promises';
import { isLive } from '../domain/vm-state.js';
import { HEALTH_OUTPUT_MAX, initialHealth, nextHealth, type HealthCheck, type HealthProbe } from '../domain/health.js';
import { formatDuration } from '../domain/duration.js';
import { stripControl } from '../domain/terminal-text.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import type { EventFeed } from './event-feed.js';
import { parseUser, runGuestCommand } from './exec-runner.js';
import type { Vms } from './vms.js';

/** How long past its timeout a probe may go unanswered (a guest whose agent stalls) before it counts as failed. */
const UNANSWERED_GRACE_MS = 5000;

/**
 * Runs each running VM's health check (domain/health.ts) through its agent and records the
 * results. It learns of VMs that start from the event log (a `start` event), so nothing to its
 * left calls it; at open it takes up the VMs a previous celld left running, with the health they
 * had. A paused VM is not probed; a VM that stops ends its loop.
 */
export class HealthMonitor {
  private readonly loops = new Set<string>();
  /** Each VM's check while it runs (one at a time). */
  private readonly pending = new Map<string, Promise<unknown>>();
  private readonly stop = new AbortController();

  constructor(
    private readonly ctx: Pick<EngineContext, 'stores' | 'log'>,
    private readonly vms: Vms,
    private readonly events: EventFeed,
  ) {}

  start(): void {
    for (const vm of this.ctx.stores.vms.list()) {
      if (vm.spec.health && isLive(vm.state)) this.watch(vm.id);
    }
    void this.follow().catch((err: unknown) => {
      if (!this.stop.signal.aborted) this.ctx.log.warn(`health checks stopped following VM starts: ${(err as Error).message}`);
    });
  }

  close(): void {
    this.stop.abort();
  }

  private async follow(): Promise<void> {
    const filter = { vm: [], snapshot: [], type: ['vm'], event: ['start'], label: [] };
    for await (const event of this.events.read({ filter }, this.stop.signal)) {
      const vm = this.ctx.stores.vms.get(event.actor.id);
      if (vm?.spec.health) this.watch(vm.id);
    }
  }

  /** One loop per VM: a VM that stops and starts again before its loop noticed keeps the loop. */
  private watch(id: string): void {
    if (this.loops.has(id)) return;
    this.loops.add(id);
    void this.loop(id)
      .catch((err: unknown) => {
        if (!this.stop.signal.aborted) this.ctx.log.warn(`health check of ${id.slice(0, 12)}: ${(err as Error).message}`);
      })
      .finally(() => {
        this.loops.delete(id);
        if (this.stop.signal.aborted) return;
        // A start that came while this loop was ending found it still there: take it up again.
        const vm = this.ctx.stores.vms.get(id);
        if (vm?.spec.health && vm.state === 'running') this.watch(id);
      });
  }

  private async loop(id: string): Promise<void> {
    const signal = this.stop.signal;
    for (;;) {
      const vm = this.ctx.stores.vms.get(id);
      const check = vm?.spec.health;
      if (!vm || !check || !isLive(vm.state)) return;
      // The first probe comes one interval after the start, as Docker's does.
      await sleep(check.intervalMs, undefined, { signal }).catch(() => {});
      if (signal.aborted) return;
      const current = this.ctx.stores.vms.get(id);
      if (!current || current.state !== 'running') continue;
      const probe = await this.probe(current, check);
      // A celld closing while the probe ran has closed its database too.
      if (signal.aborted) return;
      const latest = this.ctx.stores.vms.get(id);
      if (!latest || latest.state !== 'running' || latest.startedAt !== current.startedAt) continue;
      const startedAt = Date.parse(latest.startedAt ?? '') || 0;
      const inStartPeriod = Date.parse(probe.start) - startedAt < check.startPeriodMs;
      this.ctx.stores.vms.setHealth(id, nextHealth(latest.health ?? initialHealth(), probe, check, inStartPeriod));
    }
  }

  /**
   * One run of the check: never throws, never waits much past its timeout, keeps at most
   * HEALTH_OUTPUT_MAX bytes. A check the guest never ends (a child that keeps its output open
   * outlives the kill) stays the VM's one pending check, and gets no output credit past its
   * timeout: the next probes fail at once instead of starting more guest processes.
   */
  private async probe(vm: VmRecord, check: HealthCheck): Promise<HealthProbe> {
    const start = new Date().toISOString();
    if (this.pending.has(vm.id)) {
      return { start, end: start, exitCode: -1, output: 'the previous health check is still running: it outlived its timeout and its kill' };
    }
    const chunks: Buffer[] = [];
    let kept = 0;
    const collect = (chunk: Buffer) => {
      if (kept >= HEALTH_OUTPUT_MAX) return;
      chunks.push(chunk.subarray(0, HEALTH_OUTPUT_MAX - kept));
      kept += Math.min(chunk.length, HEALTH_OUTPUT_MAX - kept);
    };
    const kill = new AbortController();
    const timer = setTimeout(() => kill.abort(), check.timeoutMs);
    const never = new Promise<void>(() => {});
    const outcome = async (): Promise<{ exitCode: number; note?: string }> => {
      try {
        const { uid, gid } = parseUser(vm.spec.user);
        const result = await runGuestCommand(
          this.vms.agentOf(vm),
          { argv: check.cmd, env: vm.spec.env, cwd: vm.spec.workingDir, uid, gid, timeoutSec: 0, signal: kill.signal },
          // Past its timeout the check gets no more output credit: what it writes stays in the guest.
          { stdout: collect, stderr: collect, behind: () => (kill.signal.aborted ? never : undefined) },
        );
        return kill.signal.aborted ? { exitCode: 124, note: `health check timed out after ${formatDuration(check.timeoutMs)}` } : { exitCode: result.exitCode };
      } catch (err) {
        return { exitCode: -1, note: `health check could not run: ${(err as Error).message}` };
      }
    };
    const unanswered = sleep(check.timeoutMs + UNANSWERED_GRACE_MS, { exitCode: -1, note: "health check got no answer from the guest's agent" }, { ref: false });
    const running = outcome();
    this.pending.set(vm.id, running);
    void running.finally(() => this.pending.delete(vm.id));
    const { exitCode, note } = await Promise.race([running, unanswered]);
    clearTimeout(timer);
    kill.abort();
    const output = stripControl(Buffer.concat(chunks).toString('utf8'));
    return { start, end: new Date().toISOString(), exitCode, output: note ? `${output}${output && !output.endsWith('\n') ? '\n' : ''}${note}` : output };
  }
}
