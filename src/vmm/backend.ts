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
  /** The disk the VM's qcow2 overlay sits on: an image's base disk or a snapshot's frozen layer. */
  baseDiskPath: string;
  baseDiskFormat: 'raw' | 'qcow2';
  cpus: number;
  memoryMib: number;
  hostname: string;
  accelerator: Accelerator;
  /**
   * Guest RAM backed by a file, so a snapshot can keep it and forks can map it copy-on-write.
   * `shared` (MAP_SHARED): the guest writes into the file (a VM whose memory a snapshot may take).
   * Not shared (MAP_PRIVATE): the file is a read-only template, the guest's writes stay private.
   */
  memory: { path: string; shared: boolean };
  /**
   * A second disk (ext4) the guest mounts at `mountPoint`: like the root disk, a qcow2 overlay in
   * the VM's directory over a base (an empty ext4 image, or a snapshot's frozen data layer).
   */
  dataDisk?: { baseDiskPath: string; baseDiskFormat: 'raw' | 'qcow2'; mountPoint: string };
  /** Start paused, waiting for `migrate-incoming` (restore from a snapshot). */
  incoming?: boolean;
}

/** Files a machine uses inside its directory. */
export interface MachineFiles {
  overlay: string;
  /** The data disk's overlay (used only by machines with a data disk). */
  dataOverlay: string;
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
