import { mkdir, rm } from 'node:fs/promises';
import { closeSync, constants, existsSync, openSync, readFileSync } from 'node:fs';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { stripControl } from '../../domain/terminal-text.js';
import type { AttachedMachine, Backend, BackendCapabilities, MachineFiles, MachineSpec, StartedMachine } from '../backend.js';
import { buildQemuArgv, MACHINE_TYPE } from './argv.js';
import { QmpControl } from './control.js';
import { machineFiles } from './files.js';
import { createOverlay } from './overlay.js';
import { isQemuOf, signalProcess, spawnQemu, tailFile, waitGone } from './process.js';
import { QmpClient } from './qmp.js';

/** The QEMU `-M microvm` driver. */
export class QemuBackend implements Backend {
  readonly name = 'qemu';
  readonly capabilities: BackendCapabilities = { snapshots: true, fork: true, pause: true, console: true };
  readonly machineType = MACHINE_TYPE;

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
    await Promise.all([rm(files.qmpSocket, { force: true }), rm(files.agentSocket, { force: true }), rm(files.serialLog, { force: true })]);
    // The guest's console output is the user's: 0600 (QEMU would make it 0644), made exclusively.
    closeSync(openSync(files.serialLog, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
    const spawned = spawnQemu(buildQemuArgv(spec, files, extraKernelArgs), files.qemuLog);
    let exitedEarly = false;
    void spawned.exited.then(() => {
      exitedEarly = true;
    });
    try {
      const qmp = await Promise.race([
        QmpClient.connect(files.qmpSocket, 10_000),
        spawned.exited.then(() => {
          throw this.bootFailure(spec, files, 'QEMU exited during start-up');
        }),
      ]);
      return { pid: spawned.pid, files, control: new QmpControl(qmp), exited: spawned.exited };
    } catch (err) {
      if (!exitedEarly) await this.kill(spawned.pid, spec.id);
      if (err instanceof CellError && err.code === ErrorCodes.BOOT_FAILED) throw err;
      throw this.bootFailure(spec, files, (err as Error).message);
    }
  }

  /** Reconnects to a QEMU started earlier (by another celld). */
  async attach(id: string, dir: string, pid: number): Promise<AttachedMachine | null> {
    if (!isQemuOf(pid, id)) return null;
    const files = machineFiles(dir);
    try {
      return { files, control: new QmpControl(await QmpClient.connect(files.qmpSocket, 2000)), memoryShared: memoryIsShared(pid) };
    } catch {
      return null;
    }
  }

  isRunning(pid: number, id: string): boolean {
    return isQemuOf(pid, id);
  }

  /** Ends QEMU: polite `quit` is the caller's business; this is SIGTERM then SIGKILL. */
  async kill(pid: number, id: string): Promise<void> {
    if (!isQemuOf(pid, id)) return;
    signalProcess(pid, 'SIGTERM');
    if (await waitGone(pid, id, 2000)) return;
    signalProcess(pid, 'SIGKILL');
    await waitGone(pid, id, 5000);
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
