import { mkdir, rm } from 'node:fs/promises';
import { closeSync, constants, existsSync, openSync, readFileSync } from 'node:fs';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { stripControl } from '../../domain/terminal-text.js';
import type { AttachedMachine, Backend, BackendCapabilities, MachineFiles, MachineSpec, StartedMachine } from '../backend.js';
import { buildQemuArgv, MACHINE_OPTIONS, MACHINE_TYPE, TCG_CPU_MODEL } from './argv.js';
import { Cgroups } from './cgroup.js';
import { confinementEnabled, pickRunAs } from './confinement.js';
import { QmpControl } from './control.js';
import { incomingSocketPath, machineFiles } from './files.js';
import { createOverlay } from './overlay.js';
import { isQemuOf, signalProcess, spawnQemu, tailFile, waitGone } from './process.js';
import { QmpClient } from './qmp.js';
import { startShares, stopShares, type RunningShare } from './virtiofs.js';

export interface QemuBackendOptions {
  /**
   * Prefix of the /tmp folders migration saves listen in, one per CELL_HOME
   * (domain/paths.ts homeTmpPrefix), so the next celld can tell its own leftovers.
   */
  saveDirPrefix?: string;
}

/** The QEMU `-M microvm` driver. */
export class QemuBackend implements Backend {
  readonly name = 'qemu';
  readonly capabilities: BackendCapabilities = { snapshots: true, fork: true, pause: true, console: true };
  readonly machineType = `${MACHINE_TYPE},${MACHINE_OPTIONS}`;
  cpuModel(accelerator: 'kvm' | 'tcg'): string {
    return accelerator === 'kvm' ? 'host' : TCG_CPU_MODEL;
  }
  private cgroupsFound?: Cgroups;

  constructor(private readonly opts: QemuBackendOptions = {}) {}

  /** The host's cgroups, found on first use (none when confinement is off or celld is not root). */
  private get cgroups(): Cgroups {
    if (!this.cgroupsFound) {
      if (!confinementEnabled()) this.cgroupsFound = Cgroups.none('CELL_CONFINE=0');
      else if (process.getuid?.() !== 0) this.cgroupsFound = Cgroups.none('celld is not root');
      else {
        this.cgroupsFound = Cgroups.detect();
        if (this.cgroupsFound.unavailable) process.stderr.write(`warning: QEMUs run without cgroup limits: ${this.cgroupsFound.unavailable}\n`);
        this.cgroupsFound.sweep();
      }
    }
    return this.cgroupsFound;
  }

  /** Confinement as it applies here: CELL_CONFINE, root or not, what the host's cgroups allow. */
  confinement(): { sandbox: boolean; runAs: boolean; cgroups: string } {
    const on = confinementEnabled();
    return { sandbox: on, runAs: on && process.getuid?.() === 0, cgroups: this.cgroups.unavailable ?? 'per machine' };
  }

  files(dir: string): MachineFiles {
    return machineFiles(dir);
  }

  /**
   * Creates the VM's overlay on first start (later starts keep the disk) and launches QEMU.
   * Resolves once QMP answers, i.e. QEMU is up; the guest is still booting.
   */
  async start(spec: MachineSpec, extraKernelArgs: readonly string[] = []): Promise<StartedMachine> {
    const files = machineFiles(spec.dir);
    await mkdir(spec.dir, { recursive: true, mode: 0o700 });
    if (!existsSync(files.overlay)) await createOverlay(files.overlay, spec.baseDiskPath, spec.baseDiskFormat);
    if (spec.dataDisk && !existsSync(files.dataOverlay)) await createOverlay(files.dataOverlay, spec.dataDisk.baseDiskPath, spec.dataDisk.baseDiskFormat);
    // Stale sockets from an earlier run would make QEMU fail to bind.
    const incoming = incomingSocketPath(spec.dir);
    await Promise.all([files.qmpSocket, files.agentSocket, files.consoleSocket, files.serialLog, incoming].map((f) => rm(f, { force: true })));
    // The guest's console output is the user's: 0600 (QEMU would make it 0644), made exclusively.
    closeSync(openSync(files.serialLog, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
    const sandbox = confinementEnabled();
    const runAs = pickRunAs();
    const cgroup = this.cgroups.create(spec.id, { cpus: spec.cpus, memoryMib: spec.memoryMib, accelerator: spec.accelerator }, spec.background ? 'background' : 'normal');
    // As its own user, QEMU gets its disks as descriptors (see QemuConfinement.diskFds).
    const diskFds: number[] = [];
    let spawned;
    let shares: RunningShare[] = [];
    try {
      if (spec.hostFolders?.length && !spec.memory.shared) {
        throw new CellError(ErrorCodes.INTERNAL, 'host folders need the guest RAM shared with virtiofsd: a cold boot, not a fork');
      }
      shares = await startShares(spec.dir, spec.hostFolders ?? []);
      if (runAs) diskFds.push(openSync(files.overlay, 'r+'), openSync(files.overlay, 'r'));
      if (runAs && spec.dataDisk) diskFds.push(openSync(files.dataOverlay, 'r+'), openSync(files.dataOverlay, 'r'));
      const volumeFds: [number, number][] = [];
      for (const volume of runAs ? (spec.volumes ?? []) : []) {
        volumeFds.push([3 + diskFds.length, 4 + diskFds.length]);
        diskFds.push(openSync(volume.imagePath, volume.readOnly ? 'r' : 'r+'), openSync(volume.imagePath, 'r'));
      }
      const childFds = runAs
        ? { root: [3, 4] as [number, number], data: spec.dataDisk ? ([5, 6] as [number, number]) : undefined, ...(volumeFds.length ? { volumes: volumeFds } : {}) }
        : undefined;
      const shareSockets = shares.map((s) => s.socketPath);
      spawned = spawnQemu(buildQemuArgv(spec, files, extraKernelArgs, { sandbox, runAs, diskFds: childFds, shareSockets }), files.qemuLog, diskFds, spec.network?.netns);
    } catch (err) {
      // Nothing started: the group made for it goes too, and the shares made for it.
      cgroup?.removeSoon();
      stopShares(shares);
      throw err;
    } finally {
      for (const fd of diskFds) closeSync(fd);
    }
    let exitedEarly = false;
    void spawned.exited.then(() => {
      exitedEarly = true;
    });
    try {
      // Right after exec, before QEMU has set up the guest: what it allocates from now on counts.
      try {
        cgroup?.add(spawned.pid);
      } catch (err) {
        throw this.bootFailure(spec, files, `cannot move QEMU into its cgroup: ${(err as Error).message}`);
      }
      const qmp = await Promise.race([
        QmpClient.connect(files.qmpSocket, 10_000),
        spawned.exited.then(() => {
          throw this.bootFailure(spec, files, 'QEMU exited during start-up');
        }),
      ]);
      const control = new QmpControl(qmp, { pid: spawned.pid, incomingSocket: spec.incoming ? incoming : undefined, saveDirPrefix: this.opts.saveDirPrefix, onEnd: () => cgroup?.removeSoon() });
      return { pid: spawned.pid, files, control, exited: spawned.exited };
    } catch (err) {
      if (!exitedEarly) await this.kill(spawned.pid, spec.id);
      cgroup?.removeSoon();
      stopShares(shares);
      if (err instanceof CellError && err.code === ErrorCodes.BOOT_FAILED) throw err;
      throw this.bootFailure(spec, files, (err as Error).message);
    }
  }

  /** Reconnects to a QEMU started earlier (by another celld). */
  async attach(id: string, dir: string, pid: number): Promise<AttachedMachine | null> {
    if (!isQemuOf(pid, id)) return null;
    const files = machineFiles(dir);
    try {
      const qmp = await QmpClient.connect(files.qmpSocket, 2000);
      const cgroup = this.cgroups.groupOf(pid);
      const control = new QmpControl(qmp, { pid, saveDirPrefix: this.opts.saveDirPrefix, onEnd: () => cgroup?.removeSoon() });
      return { files, control, memoryShared: memoryIsShared(pid) };
    } catch {
      return null;
    }
  }

  isRunning(pid: number, id: string): boolean {
    return isQemuOf(pid, id);
  }

  /** Without cgroups (not root) there is no weight to restore: spares were made at the usual share. */
  foreground(pid: number): void {
    try {
      this.cgroups.groupOf(pid)?.setPriority('normal');
    } catch {
      /* the QEMU is gone: its fork fails on its own */
    }
  }

  /** Ends QEMU: polite `quit` is the caller's business; this is SIGTERM then SIGKILL. */
  async kill(pid: number, id: string): Promise<void> {
    if (!isQemuOf(pid, id)) return;
    const cgroup = this.cgroups.groupOf(pid);
    signalProcess(pid, 'SIGTERM');
    if (!(await waitGone(pid, id, 2000))) {
      signalProcess(pid, 'SIGKILL');
      await waitGone(pid, id, 5000);
    }
    // Now, not in a timer: celld may be on its way out (it ends spares when it stops).
    if (cgroup && !(await cgroup.removeWithin(2000))) cgroup.removeSoon();
  }

  serialTail(dir: string, lines = 20): string {
    return tailFile(machineFiles(dir).serialLog, lines);
  }

  bootFailure(spec: Pick<MachineSpec, 'dir'>, files: MachineFiles, why: string): CellError {
    const qemuLog = tailFile(files.qemuLog, 10);
    const serial = tailFile(files.serialLog, 20);
    // `why` may quote the guest (an agent's answer): no control sequences in the message either.
    const parts = [`VM failed to boot: ${stripControl(why)}`];
    if (qemuLog) parts.push(`qemu: ${qemuLog.split('\n').slice(-3).join(' | ')}`);
    return new CellError(ErrorCodes.BOOT_FAILED, parts.join('; '), { serialTail: serial, qemuLog, dir: spec.dir });
  }
}

/** Whether a QEMU's RAM is a MAP_SHARED file (cold boot) rather than a private mapping (a fork). */
function memoryIsShared(pid: number): boolean {
  try {
    return /memory-backend-file[^\0]*share=on/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return false;
  }
}
