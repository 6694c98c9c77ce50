/**
 * A Backend for engine tests that need no QEMU. Each "machine" is the real guest agent in
 * `--stdio` mode (it runs commands on this host, never renames it or sets its clock), reached
 * through a unix socket at the machine's agent path, so the engine's agent client, exec, files
 * and readiness checks run for real. The machine's process stands in for QEMU: pause is SIGSTOP,
 * resume SIGCONT, its exit closes the control channel. Saved states are small JSON files naming
 * the machine they came from; RAM files are files with a marker.
 *
 * What it does not model (the real-QEMU tests cover it): boot time, device state, copy-on-write
 * RAM, qcow2 backing chains. The parity test in test/e2e runs the same lifecycle on QEMU.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import type {
  AttachedMachine,
  Backend,
  BackendCapabilities,
  DiskIo,
  MachineControl,
  MachineFiles,
  MachineSpec,
  StartedMachine,
} from '../../src/vmm/backend.js';
import { machineFiles } from '../../src/vmm/qemu/files.js';

interface FakeState {
  format: 'fake-state/1';
  machine: string;
  withRam: boolean;
}

/** One fake machine: an agent process and the socket that reaches it. */
class FakeMachine {
  readonly proc: ChildProcessWithoutNullStreams;
  readonly exited: Promise<void>;
  private server: Server | undefined;
  private client: Socket | undefined;
  alive = true;
  paused = false;
  /** Control channels open on it; each is closed when the machine ends. */
  readonly controls = new Set<FakeControl>();

  constructor(
    readonly spec: MachineSpec,
    readonly files: MachineFiles,
    agentBin: string,
    agentArgs: readonly string[] = [],
  ) {
    this.proc = spawn(agentBin, ['--stdio', ...agentArgs], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdin.on('error', () => {});
    this.proc.stderr.resume();
    this.proc.stdout.on('data', (chunk: Buffer) => this.client?.write(chunk));
    this.exited = new Promise((resolve) =>
      this.proc.once('exit', () => {
        this.alive = false;
        this.server?.close();
        this.client?.destroy();
        for (const control of this.controls) control.close();
        resolve();
      }),
    );
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Serves the agent on the machine's agent socket: one connection at a time, like virtio-serial. */
  async listen(): Promise<void> {
    await rm(this.files.agentSocket, { force: true });
    this.server = createServer((socket) => {
      this.client?.destroy();
      this.client = socket;
      socket.on('data', (chunk) => this.proc.stdin.write(chunk));
      socket.on('error', () => {});
      socket.on('close', () => {
        if (this.client === socket) this.client = undefined;
      });
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.files.agentSocket, resolve);
    });
  }

  signal(sig: NodeJS.Signals): void {
    if (this.alive) this.proc.kill(sig);
  }
}

class FakeControl implements MachineControl {
  private listeners: (() => void)[] = [];
  private closed = false;

  constructor(private readonly machine: FakeMachine) {
    machine.controls.add(this);
  }

  async pause(): Promise<void> {
    this.live();
    this.machine.signal('SIGSTOP');
    this.machine.paused = true;
  }

  async resume(): Promise<void> {
    this.live();
    this.machine.signal('SIGCONT');
    this.machine.paused = false;
  }

  async quit(): Promise<void> {
    this.live();
    this.machine.signal('SIGKILL');
    await this.machine.exited;
  }

  async saveState(path: string, opts: { withRam: boolean }): Promise<void> {
    this.live();
    if (!this.machine.paused) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, 'fake: saving the state of a running machine');
    const state: FakeState = { format: 'fake-state/1', machine: this.machine.spec.id, withRam: opts.withRam };
    await writeFile(path, JSON.stringify(state));
  }

  async loadState(path: string, opts: { withRam: boolean }): Promise<void> {
    this.live();
    let state: FakeState;
    try {
      state = JSON.parse(readFileSync(path, 'utf8')) as FakeState;
    } catch (err) {
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `restoring the VM state failed: ${(err as Error).message}`);
    }
    if (state.format !== 'fake-state/1') throw new CellError(ErrorCodes.SNAPSHOT_FAILED, 'restoring the VM state failed: not a fake state');
    if (state.withRam !== opts.withRam) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, 'restoring the VM state failed: RAM expected differently');
    // A machine that loads a state with its RAM gets that RAM into its (shared) memory file.
    if (opts.withRam) writeFileSync(this.machine.spec.memory.path, `ram of ${state.machine}`);
  }

  /** The fake's disk is this host's: the agent process's own I/O counters (/proc/PID/io) stand in. */
  async diskIo(): Promise<DiskIo> {
    this.live();
    const io = readFileSync(`/proc/${this.machine.pid}/io`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1] ?? 0);
    return { readBytes: field('rchar'), writeBytes: field('wchar') };
  }

  onClose(listener: () => void): void {
    if (this.closed) queueMicrotask(listener);
    else this.listeners.push(listener);
  }

  clearCloseListeners(): void {
    this.listeners = [];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.machine.controls.delete(this);
    const listeners = this.listeners;
    this.listeners = [];
    for (const l of listeners) l();
  }

  private live(): void {
    if (this.closed || !this.machine.alive) throw new CellError(ErrorCodes.QMP_ERROR, 'fake: the machine is gone');
  }
}

export class FakeBackend implements Backend {
  readonly name = 'fake';
  readonly capabilities: BackendCapabilities = { snapshots: true, fork: true, pause: true, console: false };
  readonly machineType = 'fake-microvm';
  cpuModel(accelerator: 'kvm' | 'tcg'): string {
    return accelerator === 'kvm' ? 'host' : 'qemu64';
  }
  private readonly machines = new Map<number, FakeMachine>();
  /** Every spec `start` was given, in order. */
  readonly starts: MachineSpec[] = [];
  /** Makes the next starts fail (a broken VMM). */
  failStarts = 0;
  /** More arguments for the agents of machines started from now on (`--kmsg FIFO`: its "kernel log"). */
  agentArgs: string[] = [];

  constructor(private readonly agentBin: string) {}

  /** The same layout as QEMU's machines, so the engine's paths are checked too. */
  files(dir: string): MachineFiles {
    return machineFiles(dir);
  }

  async start(spec: MachineSpec): Promise<StartedMachine> {
    this.starts.push(spec);
    if (this.failStarts > 0) {
      this.failStarts--;
      throw this.bootFailure(spec, this.files(spec.dir), 'fake: the VMM refused to start');
    }
    const files = this.files(spec.dir);
    await mkdir(spec.dir, { recursive: true });
    // The overlay names its base, so tests can see which layer a VM runs on.
    if (!existsSync(files.overlay)) await writeFile(files.overlay, `overlay on ${spec.baseDiskPath}\n`);
    if (spec.dataDisk && !existsSync(files.dataOverlay)) await writeFile(files.dataOverlay, `overlay on ${spec.dataDisk.baseDiskPath}\n`);
    // Like QEMU: an empty RAM file (the engine makes it for a cold boot) is sized and filled.
    if (spec.memory.shared && !(existsSync(spec.memory.path) && statSync(spec.memory.path).size > 0)) await writeFile(spec.memory.path, `ram of ${spec.id}`);
    const machine = new FakeMachine(spec, files, this.agentBin, this.agentArgs);
    // An incoming machine waits for its state before its "guest" runs.
    if (spec.incoming) machine.signal('SIGSTOP');
    machine.paused = spec.incoming ?? false;
    this.machines.set(machine.pid, machine);
    await machine.listen();
    await writeFile(files.pidFile, `${machine.pid}\n`);
    return { pid: machine.pid, files, control: new FakeControl(machine), exited: machine.exited };
  }

  async attach(id: string, dir: string, pid: number): Promise<AttachedMachine | null> {
    const machine = this.machines.get(pid);
    if (!machine?.alive || machine.spec.id !== id) return null;
    return { files: this.files(dir), control: new FakeControl(machine), memoryShared: machine.spec.memory.shared };
  }

  readonly foregrounded: number[] = [];
  foreground(pid: number): void {
    this.foregrounded.push(pid);
  }

  isRunning(pid: number, id: string): boolean {
    const machine = this.machines.get(pid);
    return machine?.alive === true && machine.spec.id === id;
  }

  async kill(pid: number, id: string): Promise<void> {
    const machine = this.machines.get(pid);
    if (!machine?.alive || machine.spec.id !== id) return;
    machine.signal('SIGKILL');
    await machine.exited;
  }

  bootFailure(_spec: Pick<MachineSpec, 'dir'>, _files: MachineFiles, why: string): CellError {
    return new CellError(ErrorCodes.BOOT_FAILED, `VM failed to boot: ${why}`);
  }

  serialTail(): string {
    return '';
  }

  // ---- for tests ----

  /** Machines whose process is alive. */
  alive(): { pid: number; id: string; dir: string; paused: boolean }[] {
    return [...this.machines.values()].filter((m) => m.alive).map((m) => ({ pid: m.pid, id: m.spec.id, dir: m.spec.dir, paused: m.paused }));
  }

  /** The machine ends on its own (a guest crash, an OOM kill). */
  crash(id: string): Promise<void> {
    const machine = [...this.machines.values()].find((m) => m.alive && m.spec.id === id);
    if (!machine) throw new Error(`no live fake machine ${id}`);
    machine.signal('SIGKILL');
    return machine.exited;
  }

  /** Ends every machine (test clean-up, even after a failure). */
  async killAll(): Promise<void> {
    await Promise.all([...this.machines.values()].filter((m) => m.alive).map((m) => (m.signal('SIGKILL'), m.exited)));
  }
}
