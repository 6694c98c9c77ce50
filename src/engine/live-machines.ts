import { randomBytes } from 'node:crypto';
import { phaseTrace } from './phase-trace.js';
import { AgentClient } from '../agent/client.js';
import { connectWithRetry } from '../vmm/unix-socket.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Backend, MachineControl, MachineSpec, StartedMachine } from '../vmm/backend.js';

const SIGTERM = 15;
const SIGKILL = 9;

export interface LiveMachine {
  id: string;
  pid: number;
  dir: string;
  control: MachineControl;
  agent: AgentClient;
  /** RAM is a MAP_SHARED file (cold boot), so a snapshot can take the file as it is. */
  memoryShared: boolean;
  /** Set when we asked the machine to go away, so its exit is not reported as a crash. */
  stopping: boolean;
  /** Settles when QEMU is gone. */
  gone: Promise<void>;
}

export type GoneListener = (id: string, expected: boolean) => void;
/** The guest kernel's OOM killer ended a process (as the agent reported it: not yet validated). */
export type OomListener = (id: string, pid: number, name: Buffer) => void;

export function bootTimeoutMs(): number {
  const fromEnv = Number(process.env.CELL_BOOT_TIMEOUT);
  return Number.isFinite(fromEnv) && fromEnv > 0 ? fromEnv * 1000 : 30_000;
}

/**
 * The machines this daemon holds a QMP and agent connection to. Booting ends when the agent
 * answers; a machine that misses the deadline is killed and reported with its serial log's tail.
 */
export class LiveMachines {
  private readonly machines = new Map<string, LiveMachine>();

  constructor(
    private readonly backend: Backend,
    private readonly onGone: GoneListener,
    private readonly onOom: OomListener = () => {},
  ) {}

  get(id: string): LiveMachine | undefined {
    return this.machines.get(id);
  }

  require(id: string): LiveMachine {
    const live = this.machines.get(id);
    if (!live || live.agent.closed) throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${id.slice(0, 12)} is not running`);
    return live;
  }

  ids(): string[] {
    return [...this.machines.keys()];
  }

  /**
   * Boots a machine, or with `restore` brings one back from saved state: QEMU starts paused
   * waiting for the state, loads it, and resumes; the guest continues where it was saved.
   */
  async boot(spec: MachineSpec, onPid: (pid: number) => void, restore?: RestoreOptions): Promise<LiveMachine> {
    const deadline = Date.now() + bootTimeoutMs();
    const trace = phaseTrace(spec.id);
    const started = restore?.prepared?.started ?? (await this.backend.start({ ...spec, incoming: restore !== undefined }));
    trace(restore?.prepared ? 'spare taken' : 'qemu up');
    onPid(started.pid);
    try {
      if (restore) {
        if (!restore.prepared) {
          await this.loadState(spec, started, restore.statePath);
          trace('state loaded');
        }
        await started.control.resume();
      }
      // A warm spare's agent answered before it was paused again: its connection carries on.
      let agent = restore?.prepared?.agent;
      if (!agent) {
        const socket = await connectWithRetry(started.files.agentSocket, Math.max(0, deadline - Date.now()));
        agent = new AgentClient(socket);
        const qemuExit = started.exited.then(() => {
          throw this.backend.bootFailure(spec, started.files, 'QEMU exited before the guest agent answered');
        });
        await Promise.race([agent.waitReady(deadline), qemuExit]);
        trace('agent ready');
      }
      // Volumes were unmounted for the snapshot (docs/volumes.md): mounted again as they are now.
      await initialiseGuest(agent, restore === undefined, restore?.identity, Boolean(restore && spec.volumes?.length));
      trace('guest initialised');
      return this.track(spec.id, started.pid, spec.dir, started.control, agent, spec.memory.shared);
    } catch (err) {
      restore?.prepared?.agent?.close();
      started.control.close();
      await this.backend.kill(started.pid, spec.id);
      if (err instanceof CellError && (err.code === ErrorCodes.BOOT_FAILED || err.code === ErrorCodes.SNAPSHOT_FAILED)) throw err;
      const why =
        err instanceof CellError && err.code === ErrorCodes.BOOT_TIMEOUT
          ? `the guest agent did not answer within ${bootTimeoutMs() / 1000} s`
          : (err as Error).message;
      const failure = this.backend.bootFailure(spec, started.files, why);
      throw new CellError(ErrorCodes.BOOT_FAILED, failure.message, failure.details);
    }
  }

  /**
   * A machine restored as far as it goes without running: QEMU up, the snapshot's state loaded,
   * the guest paused before its first instruction. `boot` with `prepared` takes it from there.
   */
  async prepareRestore(spec: MachineSpec, statePath: string): Promise<PreparedRestore> {
    const started = await this.backend.start({ ...spec, incoming: true });
    try {
      await this.loadState(spec, started, statePath);
      return { started };
    } catch (err) {
      started.control.close();
      await this.backend.kill(started.pid, spec.id);
      throw err;
    }
  }

  /**
   * Makes a prepared restore warm (a pool's warm spare, docs/pools.md): the guest runs, gets the
   * host's clock, fresh entropy and a throw-away identity, runs one command aside (outside the
   * workload, which stays frozen), and is paused again. Under TCG that translates the code a fork
   * runs first (the identity calls, the exec path), so a fork from it answers as fast as a VM that
   * has run for a while. Its agent connection is kept for the fork.
   */
  async warmUp(spec: MachineSpec, prepared: PreparedRestore, timeoutMs = bootTimeoutMs()): Promise<void> {
    const { started } = prepared;
    const deadline = Date.now() + timeoutMs;
    await started.control.resume();
    const agent = new AgentClient(await connectWithRetry(started.files.agentSocket, Math.max(0, deadline - Date.now())));
    try {
      const qemuExit = started.exited.then(() => {
        throw this.backend.bootFailure(spec, started.files, 'QEMU exited while the spare warmed up');
      });
      await Promise.race([agent.waitReady(deadline), qemuExit]);
      await Promise.all([agent.setTime(), agent.addEntropy(randomBytes(256)), agent.setIdentity({ hostname: 'cell-spare' })]);
      await Promise.race([runAside(agent, ['true'], deadline), qemuExit]);
      await started.control.pause();
      prepared.agent = agent;
    } catch (err) {
      agent.close();
      throw err;
    }
  }

  private async loadState(spec: MachineSpec, started: StartedMachine, statePath: string): Promise<void> {
    const qemuExit = started.exited.then(() => {
      throw this.backend.bootFailure(spec, started.files, 'QEMU exited while loading the snapshot (corrupt or truncated state?)');
    });
    await Promise.race([started.control.loadState(statePath, { withRam: false }), qemuExit]);
  }

  /** Reconnects to a machine a previous daemon started; null when it is gone. */
  async attach(id: string, dir: string, pid: number): Promise<LiveMachine | null> {
    const attached = await this.backend.attach(id, dir, pid);
    if (!attached) return null;
    try {
      // A machine a dead daemon left paused (in the middle of a snapshot) runs again; `cont` on a
      // running one changes nothing.
      await attached.control.resume();
      const agent = new AgentClient(await connectWithRetry(attached.files.agentSocket, 2000));
      await agent.waitReady(Date.now() + 5000);
      // ... and so do its processes, if the daemon died between freezing them and the snapshot's end.
      await agent.thaw().catch(() => {});
      // ... and its volumes, which a snapshot unmounts first (docs/volumes.md); none unmounted: nothing to do.
      await agent.mountVolumes().catch(() => {});
      return this.track(id, pid, dir, attached.control, agent, attached.memoryShared);
    } catch {
      attached.control.close();
      return null;
    }
  }

  private track(id: string, pid: number, dir: string, control: MachineControl, agent: AgentClient, memoryShared: boolean): LiveMachine {
    let markGone!: () => void;
    const gone = new Promise<void>((resolve) => {
      markGone = resolve;
    });
    const live: LiveMachine = { id, pid, dir, control, agent, memoryShared, stopping: false, gone };
    this.machines.set(id, live);
    agent.on('oom', (kill: { pid: number; name: Buffer }) => this.onOom(id, kill.pid, kill.name));
    // The control channel closing is the one signal that works whether or not we are QEMU's parent.
    control.onClose(() => {
      this.machines.delete(id);
      agent.close();
      markGone();
      this.onGone(id, live.stopping);
    });
    return live;
  }

  /**
   * Docker-style stop: SIGTERM to every guest process, wait up to `graceSec` for them to end,
   * SIGKILL the rest, then power the guest off; QEMU is killed if it does not exit by itself.
   */
  async stop(id: string, graceSec: number): Promise<void> {
    const live = this.machines.get(id);
    if (!live) return;
    live.stopping = true;
    if (!live.agent.closed) {
      try {
        if (graceSec > 0) {
          let remaining = await live.agent.signalAll(SIGTERM);
          const deadline = Date.now() + graceSec * 1000;
          while (remaining > 0 && Date.now() < deadline) {
            await new Promise((r) => setTimeout(r, 50));
            remaining = await live.agent.signalAll(0);
          }
        }
        await live.agent.signalAll(SIGKILL);
        await live.agent.shutdown();
      } catch {
        /* the agent is unreachable: fall through to ending QEMU */
      }
    }
    await this.waitGoneOrKill(live, 3000);
  }

  /** Ends the machine now (rm -f, failures): no grace, no guest shutdown. */
  async kill(id: string): Promise<void> {
    const live = this.machines.get(id);
    if (!live) return;
    live.stopping = true;
    await this.waitGoneOrKill(live, 0);
  }

  private async waitGoneOrKill(live: LiveMachine, waitMs: number): Promise<void> {
    const exited = await Promise.race([live.gone.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), waitMs))]);
    if (!exited) {
      await live.control.quit().catch(() => {});
      const quit = await Promise.race([live.gone.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
      if (!quit) await this.backend.kill(live.pid, live.id);
    }
    await this.backend.kill(live.pid, live.id);
    live.control.close();
    await live.gone;
  }

  /** Pauses the guest's CPUs (for a consistent snapshot). */
  async pause(id: string): Promise<LiveMachine> {
    const live = this.require(id);
    await live.control.pause();
    return live;
  }

  async resume(id: string): Promise<void> {
    await this.require(id).control.resume();
  }

  /** Ends a paused machine whose state was saved: QEMU quits, the guest is not shut down. */
  async quitPaused(id: string): Promise<void> {
    const live = this.machines.get(id);
    if (!live) return;
    live.stopping = true;
    await this.waitGoneOrKill(live, 0);
  }

  /** Closes connections without touching the machines (daemon shutdown: VMs outlive celld). */
  detachAll(): void {
    for (const live of this.machines.values()) {
      live.control.clearCloseListeners();
      live.control.close();
      live.agent.close();
    }
    this.machines.clear();
  }
}

export interface GuestIdentity {
  hostname: string;
  machineId: string;
}

export interface PreparedRestore {
  started: StartedMachine;
  /** A warm spare's agent connection: its guest answered once and is paused again (warmUp). */
  agent?: AgentClient;
}

export interface RestoreOptions {
  statePath: string;
  /** Already started and loaded (a spare): only resume it. */
  prepared?: PreparedRestore;
  /** A fork gets a new hostname and machine id; a VM rolled back keeps its own (undefined). */
  identity?: GuestIdentity;
}

/**
 * Every boot and restore starts with the host's clock and fresh entropy (the agent reseeds the
 * kernel CRNG, so forks of one snapshot never share random bytes); forks also get a new identity.
 */
async function initialiseGuest(agent: AgentClient, coldBoot: boolean, identity: GuestIdentity | undefined, mountVolumes: boolean): Promise<void> {
  const setUp = [
    agent.setTime(),
    agent.addEntropy(randomBytes(256)),
    identity ? agent.setIdentity(identity) : Promise.resolve(),
    mountVolumes ? agent.mountVolumes() : Promise.resolve(),
  ];
  // A cold boot has nothing frozen: its THAW (a no-op) goes out with the rest, one round trip
  // fewer before the first command (the agent handles frames in order either way).
  if (coldBoot) setUp.push(agent.thaw());
  await Promise.all(setUp);
  // Processes a snapshot froze run again only now, with the right time, a reseeded CRNG and the new name.
  if (!coldBoot) await agent.thaw();
}

/**
 * Runs a command aside (EXEC flag bit 3, docs/protocol.md) and waits for it to end. Whether it
 * succeeds does not matter (an image without `true` still ran the agent's exec path).
 */
async function runAside(agent: AgentClient, argv: string[], deadline: number): Promise<void> {
  const session = await agent.exec({ argv, env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/', uid: 0, gid: 0, stdin: false, aside: true });
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CellError(ErrorCodes.BOOT_TIMEOUT, "the spare's first command did not end in time")), Math.max(0, deadline - Date.now()));
  });
  try {
    await Promise.race([session.exit, late]);
  } finally {
    clearTimeout(timer);
  }
}

