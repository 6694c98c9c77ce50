import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Accelerator } from '../backend.js';
import { TCG_CODE_CACHE_MIB } from './argv.js';

/**
 * One cgroup per QEMU (`cellvm/<machine id>`), with memory, pids and cpu limits, as the
 * Firecracker jailer does. cgroup v2 (one hierarchy: memory.max, pids.max, cpu.max) or v1 (a
 * hierarchy per controller: memory.limit_in_bytes, pids.max, cpu.cfs_quota_us), whichever the
 * host mounts with those three controllers. A group is removed when its QEMU has ended (rmdir
 * only succeeds on an empty group, so removing is never harmful).
 */
export interface CgroupLimits {
  cpus: number;
  memoryMib: number;
  /** Under TCG, QEMU's translated-code cache (argv.ts TCG_CODE_CACHE_MIB) counts as well. */
  accelerator: Accelerator;
}

type Layout = { kind: 'v2'; parent: string } | { kind: 'v1'; parents: { cpu: string; memory: string; pids: string } };

export const CGROUP_PARENT = 'cellvm';
const CPU_PERIOD_US = 100_000;
/**
 * CPU weights (v2 cpu.weight, v1 cpu.shares): a pool's spare is made at a tenth of a VM's share,
 * so refilling a pool on a busy host does not slow the VMs that were just forked from it.
 */
const WEIGHT = { v2: { normal: 100, background: 10 }, v1: { normal: 1024, background: 102 } } as const;

/**
 * What a machine may use: its RAM, TCG's code cache (bounded by -accel tcg,tb-size) and QEMU's own
 * memory (devices, I/O buffers, its mapped binary and libraries). Measured under TCG, a 128 MiB
 * guest whose memory was full: RAM 127 MiB, anonymous 101 MiB (64 of them the code cache), mapped
 * files 23 MiB. A guest that runs out of memory must meet its own OOM killer, never this limit
 * (which kills the whole VM).
 */
export function cgroupLimits(l: CgroupLimits): { memoryBytes: number; pids: number; cpuQuotaUs: number; cpuPeriodUs: number } {
  const codeCache = l.accelerator === 'tcg' ? TCG_CODE_CACHE_MIB : 0;
  return {
    memoryBytes: (l.memoryMib + codeCache + 128 + Math.ceil(l.memoryMib / 8)) * 1024 * 1024,
    // QEMU's block thread pool alone may grow to 64 threads; vCPUs, main loop, RCU, migration.
    pids: 128 + l.cpus,
    // Every vCPU a core, plus half a core for QEMU's main loop and I/O threads.
    cpuQuotaUs: l.cpus * CPU_PERIOD_US + CPU_PERIOD_US / 2,
    cpuPeriodUs: CPU_PERIOD_US,
  };
}

export class MachineCgroup {
  private constructor(
    readonly dirs: string[],
    private readonly procs: string[],
  ) {}

  /** Moves `pid` (all its threads) into the group. */
  add(pid: number): void {
    for (const file of this.procs) writeFileSync(file, `${pid}\n`);
  }

  /** The group's share of the CPU against other machines' (never its cpu.max limit). */
  setPriority(priority: 'normal' | 'background'): void {
    if (this.dirs.length === 1) writeFileSync(join(this.dirs[0]!, 'cpu.weight'), String(WEIGHT.v2[priority]));
    else writeFileSync(join(this.dirs[2]!, 'cpu.shares'), String(WEIGHT.v1[priority]));
  }

  /** Removes the group if it is empty; false while a process is still in it. */
  remove(): boolean {
    let all = true;
    for (const dir of this.dirs) {
      try {
        rmdirSync(dir);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') all = false;
      }
    }
    return all;
  }

  /** Tries `remove` for up to `timeoutMs` (a QEMU that just exited is in it until it is reaped). */
  async removeWithin(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.remove()) {
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  /** Tries `remove` until it succeeds (the QEMU has ended) or `timeoutMs` passed (it outlives us). */
  removeSoon(timeoutMs = 10_000): void {
    const deadline = Date.now() + timeoutMs;
    const attempt = () => {
      if (this.remove() || Date.now() > deadline) return;
      setTimeout(attempt, 100).unref();
    };
    attempt();
  }

  static forId(layout: Layout, id: string): MachineCgroup {
    if (layout.kind === 'v2') {
      const dir = join(layout.parent, id);
      return new MachineCgroup([dir], [join(dir, 'cgroup.procs')]);
    }
    const dirs = [layout.parents.memory, layout.parents.pids, layout.parents.cpu].map((p) => join(p, id));
    return new MachineCgroup(dirs, dirs.map((d) => join(d, 'cgroup.procs')));
  }
}

export class Cgroups {
  private constructor(
    private readonly layout: Layout | null,
    /** Why there are no cgroups (null when there are). */
    readonly unavailable: string | null,
  ) {}

  /**
   * What this host offers under `root`: v2 when `cgroup.controllers` lists cpu, memory and pids,
   * else v1 when it has those three hierarchies; the parent groups are made here.
   */
  static detect(root = '/sys/fs/cgroup'): Cgroups {
    try {
      if (existsSync(join(root, 'cgroup.controllers'))) {
        const controllers = readFileSync(join(root, 'cgroup.controllers'), 'utf8').split(/\s+/);
        const missing = ['cpu', 'memory', 'pids'].filter((c) => !controllers.includes(c));
        if (missing.length > 0) return new Cgroups(null, `cgroup v2 at ${root} lacks the ${missing.join(', ')} controller(s)`);
        const parent = join(root, CGROUP_PARENT);
        mkdirSync(parent, { recursive: true, mode: 0o755 });
        // Children get the controllers only if every level above enables them.
        writeFileSync(join(root, 'cgroup.subtree_control'), '+cpu +memory +pids');
        writeFileSync(join(parent, 'cgroup.subtree_control'), '+cpu +memory +pids');
        return new Cgroups({ kind: 'v2', parent }, null);
      }
      const find = (names: string[]) => names.map((n) => join(root, n)).find((d) => existsSync(join(d, 'cgroup.procs')));
      const cpu = find(['cpu', 'cpu,cpuacct']);
      const memory = find(['memory']);
      const pids = find(['pids']);
      if (!cpu || !memory || !pids) return new Cgroups(null, `no cgroup v2 and no v1 cpu, memory and pids hierarchies under ${root}`);
      const parents = { cpu: join(cpu, CGROUP_PARENT), memory: join(memory, CGROUP_PARENT), pids: join(pids, CGROUP_PARENT) };
      for (const p of Object.values(parents)) mkdirSync(p, { recursive: true, mode: 0o755 });
      return new Cgroups({ kind: 'v1', parents }, null);
    } catch (err) {
      return new Cgroups(null, `cgroups under ${root} are not writable: ${(err as Error).message}`);
    }
  }

  static none(why: string): Cgroups {
    return new Cgroups(null, why);
  }

  get available(): boolean {
    return this.layout !== null;
  }

  /**
   * A new group for one QEMU of machine `id`, made with its limits. Named per QEMU, not per
   * machine: a VM resumed after a snapshot is a new QEMU while the old one's group is removed.
   */
  create(id: string, limits: CgroupLimits, priority: 'normal' | 'background' = 'normal'): MachineCgroup | null {
    if (!this.layout) return null;
    const l = cgroupLimits(limits);
    const group = MachineCgroup.forId(this.layout, `${id.slice(0, 16)}-${randomBytes(4).toString('hex')}`);
    for (const dir of group.dirs) mkdirSync(dir, { recursive: true, mode: 0o755 });
    if (this.layout.kind === 'v2') {
      const [dir] = group.dirs as [string];
      writeFileSync(join(dir, 'memory.max'), String(l.memoryBytes));
      writeFileSync(join(dir, 'pids.max'), String(l.pids));
      writeFileSync(join(dir, 'cpu.max'), `${l.cpuQuotaUs} ${l.cpuPeriodUs}`);
    } else {
      const [memory, pids, cpu] = group.dirs as [string, string, string];
      writeFileSync(join(memory, 'memory.limit_in_bytes'), String(l.memoryBytes));
      writeFileSync(join(pids, 'pids.max'), String(l.pids));
      writeFileSync(join(cpu, 'cpu.cfs_period_us'), String(l.cpuPeriodUs));
      writeFileSync(join(cpu, 'cpu.cfs_quota_us'), String(l.cpuQuotaUs));
    }
    if (priority !== 'normal') group.setPriority(priority);
    return group;
  }

  /** The group a running QEMU is in (one of ours), read from /proc/PID/cgroup. */
  groupOf(pid: number): MachineCgroup | null {
    if (!this.layout) return null;
    try {
      const match = new RegExp(`:/${CGROUP_PARENT}/([^/\\n]+)$`, 'm').exec(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
      return match ? MachineCgroup.forId(this.layout, match[1]!) : null;
    } catch {
      return null;
    }
  }

  /**
   * Removes groups whose QEMU is gone (a celld that was killed, QEMUs that ended without us):
   * empty ones older than `minAgeMs`, so a group another celld just made is left alone.
   */
  sweep(minAgeMs = 60_000): void {
    if (!this.layout) return;
    const parents = this.layout.kind === 'v2' ? [this.layout.parent] : Object.values(this.layout.parents);
    for (const parent of parents) {
      let names: string[] = [];
      try {
        names = readdirSync(parent, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
      } catch {
        continue;
      }
      for (const name of names) {
        const dir = join(parent, name);
        try {
          if (Date.now() - statSync(dir).mtimeMs < minAgeMs) continue;
          rmdirSync(dir);
        } catch {
          /* busy: its QEMU runs */
        }
      }
    }
  }
}
