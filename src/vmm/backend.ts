import type { PublishedPort } from '../domain/network.js';
import type { IoLimits } from '../domain/vm.js';
import type { CellError } from '../domain/errors.js';
import type { HostFolderMount } from '../domain/volume.js';

/**
 * The backend contract the engine programs against. QEMU is the one driver (`vmm/qemu/`); tests
 * drive the engine through a fake one (test/engine/fake-backend.ts) whose truth the real-QEMU
 * tests check. A backend without snapshot support says so in `capabilities` and the engine falls
 * back to cold boots.
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
  /** Named volumes: raw ext4 images attached as they are (no overlay: writes land in the volume), mounted at `mountPoint`. */
  volumes?: readonly { imagePath: string; mountPoint: string; readOnly: boolean }[];
  /** Host folders shared live (virtio-fs, vmm/qemu/virtiofs.ts). They need `memory.shared`: cold boots only. */
  hostFolders?: readonly HostFolderMount[];
  /** Start paused, waiting for `migrate-incoming` (restore from a snapshot). */
  incoming?: boolean;
  /** Start with a small share of the CPU (a pool's spare being made): `foreground` gives it the usual one. */
  background?: boolean;
  /** Disk and entropy rates QEMU holds the guest to. */
  limits?: IoLimits;
  /**
   * A NIC: QEMU runs inside network namespace `netns` and takes its `tap0` (engine/networking.ts),
   * or, with `user`, QEMU's own user-mode stack gives it the way out and forwards `user.forwards`
   * from the host (engine/user-networking.ts: a celld without root). The guest configures it
   * from the kernel command line. Absent: no NIC at all.
   */
  network?: { netns: string; mac: string; user?: undefined } | { user: { forwards: readonly PublishedPort[] }; mac: string; netns?: undefined };
}

/** Files a machine uses inside its directory. */
export interface MachineFiles {
  overlay: string;
  /** The data disk's overlay (used only by machines with a data disk). */
  dataOverlay: string;
  qmpSocket: string;
  agentSocket: string;
  /** The serial console, read and written by `cell console` (one client at a time; its output is also logged to serialLog). */
  consoleSocket: string;
  serialLog: string;
  qemuLog: string;
  pidFile: string;
}

export interface MachineHandle {
  pid: number;
  files: MachineFiles;
}

/** A machine's disk traffic as its VMM counts it (QEMU: `query-blockstats`). */
export interface DiskIo {
  readBytes: number;
  writeBytes: number;
}

/**
 * The control channel of one running machine (QMP for QEMU). Its closing is the one signal that
 * the machine ended, whether or not this process started it.
 */
export interface MachineControl {
  /** Stops the guest's CPUs. */
  pause(): Promise<void>;
  /** Lets the guest run: after `pause`, or after a state was loaded into a machine started `incoming`. */
  resume(): Promise<void>;
  /** Asks the VMM to exit now (no guest shutdown). */
  quit(): Promise<void>;
  /**
   * Writes the paused machine's device state to `path`; with `withRam`, its RAM too (a machine
   * whose RAM is a private mapping cannot hand the RAM over as a file).
   */
  saveState(path: string, opts: { withRam: boolean }): Promise<void>;
  /** Loads a state written by `saveState` into a machine started `incoming`; it stays paused. */
  loadState(path: string, opts: { withRam: boolean }): Promise<void>;
  /** Bytes the guest has read from and written to its disks since the machine started (all disks added up). */
  diskIo(): Promise<DiskIo>;
  /** Called once when the channel closes: the machine is gone, or `close` was called. */
  onClose(listener: () => void): void;
  /** Drops the close listeners (a machine handed from one owner to another). */
  clearCloseListeners(): void;
  /** Closes the channel; the machine keeps running. */
  close(): void;
}

export interface StartedMachine extends MachineHandle {
  control: MachineControl;
  /** Settles when the machine's process exits (this process is its parent). */
  exited: Promise<unknown>;
}

export interface AttachedMachine {
  files: MachineFiles;
  control: MachineControl;
  /** Whether its RAM is a MAP_SHARED file a snapshot can take as it is. */
  memoryShared: boolean;
}

/** A VMM driver: starts machines and finds, attaches to and ends them again by pid. */
export interface Backend {
  readonly name: string;
  readonly capabilities: BackendCapabilities;
  /** The machine model, part of every snapshot's compatibility key. */
  readonly machineType: string;
  /** The guest CPU model it gives a machine on this accelerator (part of a snapshot's compatibility key). */
  cpuModel(accelerator: Accelerator): string;
  files(dir: string): MachineFiles;
  /**
   * Creates the machine's overlays on first start (later starts keep the disks) and launches it.
   * Resolves once its control channel answers; the guest is still booting (or, `incoming`,
   * waits for `loadState`).
   */
  start(spec: MachineSpec): Promise<StartedMachine>;
  /** Reconnects to a machine started earlier (by another celld); null when it is gone or not ours. */
  attach(id: string, dir: string, pid: number): Promise<AttachedMachine | null>;
  /** Whether `pid` is still the machine `id` (pids are reused). */
  isRunning(pid: number, id: string): boolean;
  /** Ends the machine's process: SIGTERM, then SIGKILL. A pid that is not machine `id` is left alone. */
  kill(pid: number, id: string): Promise<void>;
  /** Gives a machine started with `background` the CPU share every machine has (a spare became a VM). */
  foreground(pid: number): void;
  /** A boot failure with what the machine's logs say. */
  bootFailure(spec: Pick<MachineSpec, 'dir'>, files: MachineFiles, why: string): CellError;
  serialTail(dir: string, lines?: number): string;
}
