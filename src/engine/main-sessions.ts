import { PassThrough } from 'node:stream';
import { randomUUID } from 'node:crypto';
import type { TtySize } from '../agent/frame.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { ExecTerminal } from './exec-terminal.js';
import type { ExecResult, OutputSink } from './output.js';

/**
 * The input and output of a VM's main command while it runs (`run -i`/`-t`, `cell attach`): its
 * stdin pipe and terminal, under an id the stdin and resize routes take (as an exec's), and the
 * sinks attached to its output. Output goes to every attached sink; one that falls behind holds
 * back the command (the agent's output credit), as an attached `docker attach` does.
 */
export class MainSession {
  readonly id = randomUUID();
  readonly stdin: PassThrough | undefined;
  readonly terminal: ExecTerminal | undefined;
  private readonly sinks = new Set<OutputSink>();
  private finish: (result: ExecResult | null) => void = () => {};
  /** How the command ended; null when it could not say (the VM went). */
  readonly ended: Promise<ExecResult | null>;

  constructor(opts: { stdin: boolean; tty?: TtySize }) {
    this.stdin = opts.stdin ? new PassThrough() : undefined;
    this.terminal = opts.tty ? new ExecTerminal(opts.tty) : undefined;
    this.ended = new Promise((resolve) => (this.finish = resolve));
  }

  /** What the command writes goes to each attached sink. */
  readonly output: OutputSink = {
    stdout: (chunk) => {
      for (const sink of this.sinks) sink.stdout(chunk);
    },
    stderr: (chunk) => {
      for (const sink of this.sinks) sink.stderr(chunk);
    },
    behind: () => {
      const waits = [...this.sinks].map((s) => s.behind?.()).filter((w): w is Promise<void> => w !== undefined);
      return waits.length > 0 ? Promise.all(waits).then(() => {}) : undefined;
    },
  };

  /** Adds a sink; the returned function detaches it (the command runs on). */
  attach(sink: OutputSink): () => void {
    this.sinks.add(sink);
    return () => this.sinks.delete(sink);
  }

  end(result: ExecResult | null): void {
    this.stdin?.end();
    this.sinks.clear();
    this.finish(result);
  }
}

/** The main sessions of the VMs whose main command runs with stdin or a terminal, or is attachable. */
export class MainSessions {
  private readonly byVm = new Map<string, MainSession>();
  private readonly byId = new Map<string, MainSession>();

  open(vmId: string, opts: { stdin: boolean; tty?: TtySize }): MainSession {
    const session = new MainSession(opts);
    this.byVm.set(vmId, session);
    this.byId.set(session.id, session);
    void session.ended.then(() => {
      if (this.byVm.get(vmId) === session) this.byVm.delete(vmId);
      this.byId.delete(session.id);
    });
    return session;
  }

  /** `cell attach`: the running main command of VM `vmId`. */
  require(vmId: string, name: string): MainSession {
    const session = this.byVm.get(vmId);
    if (!session) throw new CellError(ErrorCodes.CONFLICT, `VM ${name} has no main command running to attach to (its output so far: cell logs ${name})`);
    return session;
  }

  /** By its id, for the stdin and resize routes; undefined when it has ended. */
  byExecId(id: string): MainSession | undefined {
    return this.byId.get(id);
  }

  closeAll(): void {
    for (const session of this.byVm.values()) session.end(null);
  }
}
