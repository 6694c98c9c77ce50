import { setTimeout as sleep } from 'node:timers/promises';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { VmRecord, VmState } from '../domain/vm.js';
import type { NicTraffic } from '../network/traffic.js';
import type { DiskIo, MachineControl } from '../vmm/backend.js';
import type { Networking } from './networking.js';
import { cpuPercent, readProcess, type ProcessSample } from './proc-stats.js';

/** One VM's resource use as the host sees it (`cell stats`, GET /v1/vms/:ref/stats). */
export interface VmStatsRow {
  id: string;
  name: string;
  state: VmState;
  /** When the second of the two samples was taken. */
  time: string;
  /** Its VMM's CPU use over the interval: 100 = one core (a VM with two busy vCPUs approaches 200). 0 when not running. */
  cpuPercent: number;
  /** Its vCPUs (the most `cpuPercent` can reach is about 100 per vCPU, plus the VMM's own threads). */
  cpus: number;
  /** The VMM process's memory: RSS, PSS and the RAM the guest was given. Null when not running. */
  memory: { rssBytes: number; pssBytes: number; guestBytes: number } | null;
  /** Bytes the guest read and wrote on its disks since its machine started. Null when not running. */
  disk: DiskIo | null;
  /** Bytes its NIC received and sent since its machine started, from the guest's side. Null when not running, without a NIC, or with user-mode networking (nothing counts them). */
  network: NicTraffic | null;
}

/** Samples are this far apart: one row per second, like docker stats. */
export const STATS_INTERVAL_MS = 1000;

/** What the sampler reads; each is a narrow view of an engine part, so tests hand in their own. */
export interface VmStatsDeps {
  vms: { resolve(ref: string): VmRecord; get(id: string): VmRecord | undefined };
  /** The machines held now (LiveMachines): the VMM's pid and its control channel. */
  live: { get(id: string): { pid: number; control: Pick<MachineControl, 'diskIo'> } | undefined; ids(): string[] };
  network: Pick<Networking, 'traffic'>;
  readProcess?: (pid: number) => Promise<ProcessSample | null>;
  /** Monotonic milliseconds (intervals); the wall clock only names a row's time. */
  now?: () => number;
}

interface Sample {
  vm: VmRecord;
  atMs: number;
  time: Date;
  /** Null: no machine (stopped, or gone since). */
  process: ProcessSample | null;
  disk: DiskIo | null;
  network: NicTraffic | null;
}

export interface StatsStreamOptions {
  signal?: AbortSignal;
  intervalMs?: number;
}

/**
 * Host-side stats of VMs, docker stats style. CPU % needs two readings of the VMM's CPU time, so
 * the first row comes one interval after the call; the rest follow one per interval. A VM that is
 * not running (or stops meanwhile) still gets rows: CPU 0 and null memory, disk and network, as
 * docker shows a stopped container. Removing the VM ends the rows.
 */
export class VmStats {
  private readonly readProcess: (pid: number) => Promise<ProcessSample | null>;
  private readonly now: () => number;

  constructor(private readonly deps: VmStatsDeps) {
    this.readProcess = deps.readProcess ?? readProcess;
    this.now = deps.now ?? (() => performance.now());
  }

  /** One row over one interval (`cell stats --no-stream`). */
  async once(ref: string, opts: StatsStreamOptions = {}): Promise<VmStatsRow> {
    for await (const row of this.stream(ref, opts)) return row;
    if (opts.signal?.aborted) throw new CellError(ErrorCodes.CANCELLED, 'stats: cancelled');
    throw new CellError(ErrorCodes.NOT_FOUND, `VM ${ref} was removed`);
  }

  /** A row per interval until `signal` aborts or the VM is removed; the pending timer goes with the abort. */
  async *stream(ref: string, opts: StatsStreamOptions = {}): AsyncGenerator<VmStatsRow> {
    const id = this.deps.vms.resolve(ref).id;
    const interval = opts.intervalMs ?? STATS_INTERVAL_MS;
    let prev = await this.sample(id);
    while (prev && !opts.signal?.aborted) {
      try {
        await sleep(interval, undefined, { signal: opts.signal });
      } catch {
        return;
      }
      const next = await this.sample(id);
      if (!next) return;
      yield statsRow(prev, next);
      prev = next;
    }
  }

  /**
   * Rows of every VM with a machine, one batch per interval, all sampled over the same interval
   * (the dashboard's sparklines: one stream instead of one per VM). A VM whose machine starts
   * joins one interval later; one that stops or goes drops out. Every caller shares one sampling
   * loop (ten dashboards cost what one does); a caller that reads slowly gets the latest batch.
   */
  everyRunning(opts: StatsStreamOptions = {}): AsyncGenerator<VmStatsRow[]> {
    const interval = opts.intervalMs ?? STATS_INTERVAL_MS;
    let loop = this.fleetLoops.get(interval);
    if (!loop) this.fleetLoops.set(interval, (loop = new SharedLoop((signal) => this.sampleFleet(interval, signal))));
    return loop.subscribe(opts.signal);
  }

  private readonly fleetLoops = new Map<number, SharedLoop<VmStatsRow[]>>();

  private async *sampleFleet(interval: number, signal: AbortSignal): AsyncGenerator<VmStatsRow[]> {
    let prev = new Map<string, Sample>();
    for (;;) {
      const next = new Map<string, Sample>();
      // Spares are live machines without a VM record: sample() leaves them out.
      const samples = await Promise.all(this.deps.live.ids().map((id) => this.sample(id)));
      for (const sample of samples) if (sample?.process) next.set(sample.vm.id, sample);
      const rows = [...next.values()].flatMap((sample) => {
        const before = prev.get(sample.vm.id);
        return before ? [statsRow(before, sample)] : [];
      });
      if (prev.size > 0 || next.size === 0) yield rows;
      prev = next;
      if (signal.aborted) return;
      try {
        await sleep(interval, undefined, { signal });
      } catch {
        return;
      }
    }
  }

  /** The VM's record and its machine's counters now; null when the VM no longer exists. */
  private async sample(id: string): Promise<Sample | null> {
    const vm = this.deps.vms.get(id);
    if (!vm) return null;
    const atMs = this.now();
    const time = new Date();
    const live = this.deps.live.get(id);
    if (!live) return { vm, atMs, time, process: null, disk: null, network: null };
    // A machine whose QMP or namespace does not answer costs its own counters, not everyone's row.
    const [process, disk, network] = await Promise.all([
      this.readProcess(live.pid),
      within(live.control.diskIo(), COUNTER_TIMEOUT_MS).catch(() => null),
      within(this.deps.network.traffic(id, live.pid), COUNTER_TIMEOUT_MS).catch(() => null),
    ]);
    // The process gone between the lookup and the reading: a machine that just ended.
    if (!process) return { vm, atMs, time, process: null, disk: null, network: null };
    return { vm, atMs, time, process, disk, network };
  }
}

/** The row for the interval between two samples of one VM. */
export function statsRow(prev: Pick<Sample, 'atMs' | 'process'>, next: Sample): VmStatsRow {
  const { vm } = next;
  const base = { id: vm.id, name: vm.name, state: vm.state, time: next.time.toISOString(), cpus: vm.spec.cpus };
  if (!next.process) return { ...base, cpuPercent: 0, memory: null, disk: null, network: null };
  const cpu = prev.process ? cpuPercent({ cpuSeconds: prev.process.cpuSeconds, atMs: prev.atMs }, { cpuSeconds: next.process.cpuSeconds, atMs: next.atMs }) : 0;
  const memory = next.process.memory && { ...next.process.memory, guestBytes: vm.spec.memoryMib * 1024 * 1024 };
  return { ...base, cpuPercent: round2(cpu), memory, disk: next.disk, network: next.network };
}

const round2 = (n: number) => Math.round(n * 100) / 100;

/** A counter that takes longer than this is left out of its row (null). */
const COUNTER_TIMEOUT_MS = 2000;

function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error('timed out')), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

interface Subscriber<T> {
  latest: { value: T } | undefined;
  wake: (() => void) | undefined;
}

/**
 * One producer loop fanned out to every subscriber: it runs while anyone listens and stops with
 * the last one. Each subscriber holds only the latest value it has not read yet.
 */
class SharedLoop<T> {
  private readonly subscribers = new Set<Subscriber<T>>();
  private running: AbortController | undefined;

  constructor(private readonly produce: (signal: AbortSignal) => AsyncGenerator<T>) {}

  async *subscribe(signal?: AbortSignal): AsyncGenerator<T> {
    const sub: Subscriber<T> = { latest: undefined, wake: undefined };
    const wake = () => sub.wake?.();
    this.subscribers.add(sub);
    signal?.addEventListener('abort', wake);
    this.start();
    try {
      while (!signal?.aborted) {
        if (!sub.latest) await new Promise<void>((resolve) => (sub.wake = resolve));
        sub.wake = undefined;
        const got = sub.latest;
        sub.latest = undefined;
        if (got && !signal?.aborted) yield got.value;
      }
    } finally {
      this.subscribers.delete(sub);
      signal?.removeEventListener('abort', wake);
      if (this.subscribers.size === 0) this.running?.abort();
    }
  }

  private start(): void {
    // A loop still winding down after its last subscriber left restarts itself for new ones (below).
    if (this.running) return;
    const running = new AbortController();
    this.running = running;
    void (async () => {
      try {
        for await (const value of this.produce(running.signal)) {
          for (const sub of this.subscribers) {
            sub.latest = { value };
            sub.wake?.();
          }
          if (running.signal.aborted) break;
        }
      } catch {
        // A failed sample ends this round; subscribers still here get a new loop.
      } finally {
        this.running = undefined;
        if (this.subscribers.size > 0) setTimeout(() => this.start(), running.signal.aborted ? 0 : STATS_INTERVAL_MS).unref();
      }
    })();
  }
}
