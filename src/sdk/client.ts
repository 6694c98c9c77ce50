import type { ExecRequest, Image, Info, RunRequest, Snapshot, StreamEvent, Vm } from '../api/schemas.js';
import { Routes } from '../api/routes.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { cellPaths, defaultHome } from '../domain/paths.js';
import { daemonStartFailed, startDaemon } from './daemon.js';
import { Transport } from './transport.js';

export interface ConnectOptions {
  /** CELL_HOME; default from the environment. */
  home?: string;
  socketPath?: string;
  /** Start celld when it is not running (default true). */
  autoStart?: boolean;
  /** How long to wait for a freshly started celld (default 10 s). */
  timeoutMs?: number;
}

export interface OutputHandlers {
  onStdout?(chunk: Buffer): void;
  onStderr?(chunk: Buffer): void;
  signal?: AbortSignal;
}

export interface CommandResult {
  exitCode: number;
  signal: number | null;
  timedOut: boolean;
  durationMs: number;
}

export interface RunHandlers extends OutputHandlers {
  onCreated?(vm: Vm): void;
  onRunning?(vm: Vm): void;
}

export interface ExecHandlers extends OutputHandlers {
  stdin?: AsyncIterable<Buffer | string>;
}

export type SetupEvent = Extract<StreamEvent, { type: 'progress' }>;
export type PullEvent = Extract<StreamEvent, { type: 'pull' }>['event'];

const q = (params: Record<string, boolean | undefined>) => {
  const entries = Object.entries(params).filter(([, v]) => v);
  return entries.length ? `?${entries.map(([k]) => `${k}=true`).join('&')}` : '';
};

/** The typed client of celld's API. */
export class CellClient {
  private constructor(readonly transport: Transport) {}

  static async connect(opts: ConnectOptions = {}): Promise<CellClient> {
    const paths = cellPaths(opts.home ?? defaultHome());
    const transport = new Transport(opts.socketPath ?? paths.socket);
    const client = new CellClient(transport);
    if (await client.ping()) return client;
    if (opts.autoStart === false) throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld is not running for ${paths.home}`);
    startDaemon(paths);
    // Two clients may start one at once: the daemon's lock lets one win, both wait for it.
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      if (await client.ping()) return client;
    }
    throw daemonStartFailed(paths);
  }

  async ping(): Promise<boolean> {
    try {
      await this.transport.request('GET', Routes.ping);
      return true;
    } catch (err) {
      if (err instanceof CellError && err.code === ErrorCodes.DAEMON_UNAVAILABLE) return false;
      throw err;
    }
  }

  info(): Promise<Info> {
    return this.transport.request('GET', Routes.info);
  }

  async setup(opts: { reprobe?: boolean; onProgress?(e: SetupEvent): void } = {}): Promise<void> {
    for await (const event of this.transport.stream('POST', Routes.setup + q({ reprobe: opts.reprobe }))) {
      if (event.type === 'progress') opts.onProgress?.(event);
    }
  }

  readonly vms = {
    list: (opts: { all?: boolean } = {}): Promise<Vm[]> => this.transport.request('GET', Routes.vms + q({ all: opts.all })),
    get: (ref: string): Promise<Vm> => this.transport.request('GET', Routes.vm(ref)),
    /** Creates and boots a VM that keeps running (its main command, if any, runs in the background). */
    create: (req: RunRequest): Promise<Vm> => this.transport.request('POST', Routes.vms, req),
    start: (ref: string): Promise<Vm> => this.transport.request('POST', Routes.vmStart(ref), {}),
    stop: (ref: string, opts: { timeoutSec?: number } = {}): Promise<Vm> => this.transport.request('POST', Routes.vmStop(ref), opts),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> => this.transport.request('DELETE', Routes.vm(ref) + q({ force: opts.force })),
    logs: (ref: string, opts: { follow?: boolean; signal?: AbortSignal } = {}) => this.logs(ref, opts),
  };

  readonly snapshots = {
    list: (): Promise<Snapshot[]> => this.transport.request('GET', Routes.snapshots),
    get: (ref: string): Promise<Snapshot> => this.transport.request('GET', Routes.snapshot(ref)),
    take: (vmRef: string, opts: { name?: string; stop?: boolean } = {}): Promise<Snapshot> =>
      this.transport.request('POST', Routes.vmSnapshot(vmRef), opts),
    fork: (ref: string, opts: { count?: number; name?: string } = {}): Promise<Vm[]> => this.transport.request('POST', Routes.snapshotFork(ref), opts),
    restore: (vmRef: string, snapshot: string): Promise<Vm> => this.transport.request('POST', Routes.vmRestore(vmRef), { snapshot }),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> =>
      this.transport.request('DELETE', Routes.snapshot(ref) + q({ force: opts.force })),
    /** `file` is a path on celld's host. */
    export: (ref: string, file: string): Promise<{ bytes: number }> => this.transport.request('POST', Routes.snapshotExport(ref), { file }),
    import: (file: string, opts: { name?: string } = {}): Promise<Snapshot> => this.transport.request('POST', Routes.snapshotImport, { file, ...opts }),
    prune: (opts: { maxCount?: number; maxBytes?: number }): Promise<{ removed: Snapshot[] }> => this.transport.request('POST', Routes.snapshotPrune, opts),
  };

  readonly images = {
    list: (): Promise<Image[]> => this.transport.request('GET', Routes.images),
    pull: async (reference: string, opts: { platform?: string; onProgress?(e: PullEvent): void; signal?: AbortSignal } = {}) => {
      let image: Extract<StreamEvent, { type: 'image' }>['image'] | undefined;
      for await (const event of this.transport.stream('POST', Routes.imagePull, { reference, platform: opts.platform }, opts.signal)) {
        if (event.type === 'pull') opts.onProgress?.(event.event);
        if (event.type === 'image') image = event.image;
      }
      if (!image) throw new CellError(ErrorCodes.INTERNAL, 'the pull ended without an image');
      return image;
    },
    import: (file: string, reference?: string) => this.transport.request<{ reference: string; digest: string }>('POST', Routes.imageImport, { file, reference }),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> => this.transport.request('DELETE', Routes.image(ref) + q({ force: opts.force })),
    /** Pushes local image `reference` to `target` (default: the same reference). */
    push: (reference: string, target?: string) => this.transport.request<{ digest: string; reference: string }>('POST', Routes.imagePush, { reference, target }),
    /** `file` is a path on celld's host. */
    export: (reference: string, file: string) => this.transport.request<{ digest: string; bytes: number }>('POST', Routes.imageExport, { reference, file }),
    prune: (opts: { maxBytes?: number } = {}) => this.transport.request<{ evicted: string[]; bytesFreed: number }>('POST', Routes.imagePrune, opts),
  };

  readonly registries = {
    login: (registry: string, username: string, password: string) => this.transport.request<{ ok: boolean }>('POST', Routes.login, { registry, username, password }),
    logout: (registry: string) => this.transport.request<{ removed: boolean }>('POST', Routes.logout, { registry }),
  };

  /** Boots a VM, runs its command with output streamed to the handlers, and stops it. */
  async run(req: RunRequest, handlers: RunHandlers = {}): Promise<CommandResult & { vm: Vm }> {
    let result: CommandResult | undefined;
    let vm: Vm | undefined;
    for await (const event of this.transport.stream('POST', Routes.vmRun, req, handlers.signal)) {
      if (event.type === 'created') handlers.onCreated?.(event.vm);
      else if (event.type === 'running') handlers.onRunning?.(event.vm);
      else if (event.type === 'stdout') handlers.onStdout?.(Buffer.from(event.data, 'base64'));
      else if (event.type === 'stderr') handlers.onStderr?.(Buffer.from(event.data, 'base64'));
      else if (event.type === 'exit') result = event;
      else if (event.type === 'done') vm = event.vm;
    }
    if (!result || !vm) throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, 'the run ended without an exit status (aborted?)');
    return { ...pickResult(result), vm };
  }

  /** Runs a command in a running VM. */
  async exec(ref: string, req: Omit<ExecRequest, 'stdin'>, handlers: ExecHandlers = {}): Promise<CommandResult> {
    let result: CommandResult | undefined;
    let upload: Promise<void> | undefined;
    const body: ExecRequest = { ...req, stdin: handlers.stdin !== undefined };
    for await (const event of this.transport.stream('POST', Routes.vmExec(ref), body, handlers.signal)) {
      if (event.type === 'exec' && handlers.stdin) upload = this.transport.upload(Routes.execStdin(event.execId), handlers.stdin);
      else if (event.type === 'stdout') handlers.onStdout?.(Buffer.from(event.data, 'base64'));
      else if (event.type === 'stderr') handlers.onStderr?.(Buffer.from(event.data, 'base64'));
      else if (event.type === 'exit') result = event;
    }
    await upload?.catch(() => {});
    if (!result) throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, 'the exec ended without an exit status (aborted?)');
    return pickResult(result);
  }

  async *logs(ref: string, opts: { follow?: boolean; signal?: AbortSignal } = {}) {
    for await (const event of this.transport.stream('GET', Routes.vmLogs(ref) + q({ follow: opts.follow }), undefined, opts.signal)) {
      if (event.type === 'log') yield event;
    }
  }

  close(): void {
    this.transport.close();
  }
}

function pickResult(e: CommandResult): CommandResult {
  return { exitCode: e.exitCode, signal: e.signal, timedOut: e.timedOut, durationMs: e.durationMs };
}
