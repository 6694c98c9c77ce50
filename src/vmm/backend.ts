/**
 * The backend contract the engine programs against. QEMU is the one driver today; a backend
 * without snapshot support says so in `capabilities` and the engine falls back to cold boots.
 */
export type Accelerator = 'kvm' | 'tcg';

export interface BackendCapabilities {
  snapshots: boolean;
  fork: boolean;
  pause: boolean;
  console: boolean;
}

/** Everything needed to boot one machine. Paths are absolute. */
export interface MachineSpec {
  id: string;
  /** Per-VM directory: overlay disk, sockets, serial log, pidfile. */
  dir: string;
  kernelPath: string;
  initrdPath: string;
  /** The image's base disk; the VM writes to a qcow2 overlay on top of it. */
  baseDiskPath: string;
  cpus: number;
  memoryMib: number;
  hostname: string;
  accelerator: Accelerator;
}

/** Files a machine uses inside its directory. */
export interface MachineFiles {
  overlay: string;
  qmpSocket: string;
  agentSocket: string;
  serialLog: string;
  qemuLog: string;
  pidFile: string;
}

export interface MachineHandle {
  pid: number;
  files: MachineFiles;
}
