import { parseLabels } from '../domain/labels.js';
import { validateHealthCheck } from '../domain/health.js';
import { applyTimeouts, type TimeoutsRequest, type VmTimeouts } from '../domain/timeouts.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { validatePorts } from '../domain/network.js';
import { validateName } from '../domain/ids.js';
import { mergeEnv, validateEnv, type VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import { phaseTrace } from './phase-trace.js';
import { parseUser, runGuestCommand } from './exec-runner.js';
import { NULL_SINK, type ExecResult, type OutputSink } from './output.js';
import type { Snapshots } from './snapshots.js';
import type { Templates } from './templates.js';
import { exitInfo } from './vm-records.js';
import { MainSessions, type MainSession } from './main-sessions.js';
import type { TtySize } from '../agent/frame.js';
import type { CreateVmRequest, Vms } from './vms.js';

export interface RunRequest extends CreateVmRequest {
  detach?: boolean;
  /** `-i`: the main command's stdin stays open for the caller (or, detached, for `cell attach`). */
  interactive?: boolean;
  /** `-t`: the main command runs on a guest pseudo-terminal of this size. */
  tty?: TtySize;
  /** Fork this snapshot instead of booting the image (`image` is then ignored). */
  fromSnapshot?: string;
  /** Start from this template (`NAME` or `NAME:ROLE`): warm when it has a snapshot, else cold. */
  template?: string;
}

export interface RunEvents {
  /** The VM record exists (id and name known). */
  onCreated?(vm: VmRecord): void;
  /** The guest agent answered: the command is about to start. */
  onRunning?(vm: VmRecord): void;
  /** The main command's session (its stdin, terminal and output), just before it starts. */
  onSession?(session: MainSession): void;
}


/** `cell run` in its three forms: boot an image, fork a snapshot (`--from`), start a template. */
export class Runs {
  constructor(
    private readonly ctx: EngineContext,
    private readonly vms: Vms,
    private readonly snapshots: Snapshots,
    private readonly templates: Templates,
    /** The running main commands' stdin, terminals and attached outputs (`cell attach`). */
    readonly sessions = new MainSessions(),
  ) {}

  /**
   * `cell run`: create, boot, run the main command. Attached, the VM stops when the command ends
   * (and is removed with autoRemove); detached, it keeps running after its command. A VM that fails
   * to boot during `run` is removed: a failed run leaves nothing behind.
   */
  async run(req: RunRequest, sink: OutputSink = NULL_SINK, events: RunEvents = {}, signal?: AbortSignal): Promise<{ vm: VmRecord; result?: ExecResult }> {
    let vm: VmRecord;
    const timeline = phaseTrace('run');
    if (req.fromSnapshot && req.template) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'give --from or --template, not both');
    if (req.fromSnapshot) {
      vm = await this.forkForRun(req);
      events.onCreated?.(vm);
    } else if (req.template) {
      vm = await this.templateForRun(req);
      events.onCreated?.(vm);
    } else {
      const created = await this.vms.create(req);
      timeline(`created ${created.id.slice(0, 12)}`);
      events.onCreated?.(created);
      try {
        vm = await this.vms.start(created.id);
        timeline('started');
      } catch (err) {
        await this.vms.remove(created.id, true).catch(() => {});
        throw err;
      }
    }
    events.onRunning?.(vm);
    const io = { stdin: Boolean(req.interactive), ...(req.tty ? { tty: req.tty } : {}) };
    if (req.detach) {
      if (vm.spec.cmd.length > 0) void this.runMain(vm, NULL_SINK, io, events).catch(() => {});
      return { vm };
    }
    let result: ExecResult;
    const trace = phaseTrace(vm.id);
    try {
      result = await this.runMain(vm, sink, io, events, signal);
      trace('run: command ended');
    } finally {
      // A VM about to be removed needs no clean shutdown (its disk goes too): ending QEMU at once
      // saves the guest's power-off, tens of milliseconds under TCG.
      // Volumes outlive it: they get the guest's clean stop (its writes synced) before it goes.
      if (!vm.spec.autoRemove || vm.spec.volumes?.length || vm.spec.hostFolders?.length) await this.vms.stop(vm.id, 0).catch(() => {});
    }
    if (!vm.spec.autoRemove) return { vm: this.vms.get(vm.id) ?? vm, result };
    const final = { ...(this.vms.get(vm.id) ?? vm), state: 'stopped' as const, pid: null, stoppedAt: new Date().toISOString() };
    await this.vms.remove(vm.id, true);
    trace('run: removed');
    timeline('run returns');
    return { vm: final, result };
  }

  /** `run --from`: one fork of the snapshot whose main command is the user's. */
  private async forkForRun(req: RunRequest): Promise<VmRecord> {
    if (!req.detach && (!req.cmd || req.cmd.length === 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'run --from needs a command: cell run --from SNAPSHOT -- CMD...');
    }
    validateEnv(req.env ?? []);
    parseUser(req.user);
    if (req.cpus !== undefined || req.memoryMib !== undefined || req.dataDiskMib !== undefined || req.limits !== undefined) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a fork has its snapshot's CPUs, memory, disks and I/O limits: drop --cpus, --memory, --data-disk and the limits with --from");
    }
    if (req.egress !== undefined) throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a fork keeps its snapshot's egress rules: drop --egress with --from");
    if (req.volumes?.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'a fork mounts the volumes of its snapshot and no others (its devices are the snapshot\'s; a snapshot of a VM with host folders is refused): drop -v with --from');
    if (req.networks !== undefined) throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a fork is on its snapshot's networks: drop --network with --from (cell network connect adds one)");
    const ports = req.ports?.length ? validatePorts(req.ports) : undefined;
    const snapshot = await this.snapshots.resolveOrPull(req.fromSnapshot!);
    const [vm] = await this.snapshots.fork(snapshot.id, {
      count: 1,
      name: req.name,
      labels: parseLabels(req.labels),
      overrides: {
        cmd: req.cmd ?? [],
        env: mergeEnv(snapshot.spec.env, req.env ?? []),
        workingDir: req.workingDir || snapshot.spec.workingDir,
        user: req.user || snapshot.spec.user,
        timeoutSec: req.timeoutSec ?? 0,
        autoRemove: req.autoRemove ?? false,
        ...(ports ? { ports } : {}),
        // A fork keeps its snapshot's health check unless given its own.
        ...(req.health ? { health: validateHealthCheck(req.health) } : {}),
        ...forkTimeouts(snapshot.spec.timeouts, req),
      },
    });
    return vm!;
  }

  /** `run --template`: a VM of the template, forked warm or booted cold, whose main command is the user's. */
  private async templateForRun(req: RunRequest): Promise<VmRecord> {
    if (!req.detach && (!req.cmd || req.cmd.length === 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'run --template needs a command: cell run --template NAME -- CMD... (or -d)');
    }
    if (req.cpus !== undefined || req.memoryMib !== undefined || req.dataDiskMib !== undefined || req.limits !== undefined) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a template's VMs have its variant's CPUs, memory and data disk: drop --cpus, --memory, --data-disk and the limits with --template");
    }
    if (req.volumes?.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a template's VMs mount the volumes of its build (volumes = [...] under [build]) and no others: drop -v with --template");
    if (req.ports !== undefined || req.networks !== undefined || req.egress !== undefined) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, "a template's VMs publish its service's ports (ports = [...] under [service]) on its networks: drop -p, --network and --egress with --template");
    }
    validateEnv(req.env ?? []);
    parseUser(req.user);
    if (req.name !== undefined) validateName(req.name);
    const name = req.name ?? this.vms.freshName();
    this.vms.assertNameFree(name);
    // A registry reference is pulled on first use (templates.resolveOrPull).
    const template = await this.templates.resolveOrPull(req.template!);
    return this.templates.startVm(template, name, {
      cmd: req.cmd ?? [],
      env: req.env ?? [],
      workingDir: req.workingDir ?? '',
      user: req.user ?? '',
      timeoutSec: req.timeoutSec ?? 0,
      autoRemove: req.autoRemove ?? false,
      ...(req.health ? { health: validateHealthCheck(req.health) } : {}),
      ...forkTimeouts(undefined, req),
    });
  }

  /**
   * Runs the VM's main command; its output goes to the VM's log, to the sink and to whoever
   * attaches (`cell attach`) while it runs.
   */
  private async runMain(vm: VmRecord, sink: OutputSink, io: { stdin: boolean; tty?: TtySize }, events: RunEvents, signal?: AbortSignal): Promise<ExecResult> {
    const live = this.ctx.live.require(vm.id);
    const session = this.sessions.open(vm.id, io);
    session.attach(sink);
    events.onSession?.(session);
    const tee: OutputSink = {
      stdout: (c) => {
        this.vms.logs.append(vm.id, 'stdout', c);
        session.output.stdout(c);
      },
      stderr: (c) => {
        this.vms.logs.append(vm.id, 'stderr', c);
        session.output.stderr(c);
      },
      behind: () => session.output.behind?.(),
    };
    let ended: ExecResult | null = null;
    try {
      ended = await this.runMainCommand(vm, live, tee, session, signal);
      return ended;
    } finally {
      session.end(ended);
    }
  }

  private async runMainCommand(vm: VmRecord, live: ReturnType<EngineContext['live']['require']>, tee: OutputSink, session: MainSession, signal?: AbortSignal): Promise<ExecResult> {
    const { uid, gid } = parseUser(vm.spec.user);
    let result: ExecResult;
    try {
      result = await runGuestCommand(
        live.agent,
        { argv: vm.spec.cmd, env: vm.spec.env, cwd: vm.spec.workingDir, uid, gid, timeoutSec: vm.spec.timeoutSec, signal, stdin: session.stdin, terminal: session.terminal },
        tee,
      );
    } catch (err) {
      if (err instanceof CellError && err.code !== ErrorCodes.AGENT_DISCONNECTED) {
        tee.stderr(Buffer.from(`cell: ${err.message}\n`));
        result = { exitCode: 126, signal: null, timedOut: false, durationMs: 0 };
      } else throw err;
    }
    await this.vms.logs.flushed(vm.id);
    if (this.vms.get(vm.id)) {
      this.ctx.stores.vms.update(vm.id, { exit: exitInfo(result.timedOut ? 'timeout' : 'exited', result.exitCode, result.signal) });
    }
    return result;
  }
}

/** A fork's time limits: its snapshot's, with the run's own on top (each from the fork's start). */
function forkTimeouts(inherited: VmTimeouts | undefined, req: TimeoutsRequest): { timeouts?: VmTimeouts } {
  if (req.ttlMs === undefined && req.idleTimeoutMs === undefined && req.idleAction === undefined) return {};
  // Undefined (`--ttl 0` on a snapshot that had one) overrides the snapshot's too.
  return { timeouts: applyTimeouts(inherited, req) };
}
