import type {
  ActionRequest,
  ActionResult,
  BuildRequest,
  BuildStreamEvent,
  BuildSummary,
  CacheEntry,
  CachePruneRequest,
  ExecRequest,
  Image,
  Info,
  RunRequest,
  Snapshot,
  StreamEvent,
  TemplateBuildRequest,
  TemplateBuildSummary,
  TemplateVariantEvent,
  TemplateView,
  Vm,
} from '../api/schemas.js';
import { Routes } from '../api/routes.js';
import type { CopyResult, GuestFileStat } from '../api/schemas.js';
import { resolve as resolveHostPath } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { cellPaths, defaultHome, type CellPaths } from '../domain/paths.js';
import {
  runStream,
  execStream,
  resultStream,
  type CommandResult,
  type ExecHandlers,
  type OutputHandlers,
  type RunHandlers,
  type SetupEvent,
  type PullEvent,
  type LogEntry,
} from './commands.js';
import { DAEMON_ALREADY_RUNNING_EXIT, daemonStartFailed, startDaemon } from './daemon.js';
import { Transport } from './transport.js';

export type { CommandResult, ExecHandlers, OutputHandlers, RunHandlers, SetupEvent, PullEvent, LogEntry } from './commands.js';

export interface ConnectOptions {
  /** CELL_HOME (default: $CELL_HOME, /var/lib/cellvm as root, else ~/.local/share/cellvm). */
  home?: string;
  /** celld's socket (default: CELL_HOME/celld.sock). celld is started on demand only for the default. */
  socketPath?: string;
  /** Start celld when it is not running (default true). */
  autoStart?: boolean;
  /** How long to wait for celld to answer, including a fresh start (default 10 s). */
  timeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const POLL_MS = 20;

const query = (params: Record<string, boolean | undefined>) => {
  const set = Object.entries(params).filter(([, v]) => v);
  return set.length ? `?${set.map(([k]) => `${k}=true`).join('&')}` : '';
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The typed client of celld's HTTP API. */
export class CellClient {
  private constructor(
    readonly transport: Transport,
    readonly paths: CellPaths,
  ) {}

  /**
   * Connects to celld, starting it when it is not running. Safe when many processes do this at
   * once: only one celld wins the home's lock, every client waits for whichever one that is.
   */
  static async connect(opts: ConnectOptions = {}): Promise<CellClient> {
    const paths = cellPaths(opts.home ?? defaultHome());
    const socketPath = opts.socketPath ?? paths.socket;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const client = new CellClient(new Transport(socketPath), paths);
    try {
      if (await client.ping(AbortSignal.timeout(timeoutMs))) return client;
      if (opts.autoStart === false || socketPath !== paths.socket) {
        throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld is not running (nothing answers on ${socketPath})`);
      }
      await client.startAndWait(timeoutMs);
      return client;
    } catch (err) {
      client.close();
      if (err instanceof DOMException && err.name === 'TimeoutError') {
        throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld on ${socketPath} does not answer within ${timeoutMs / 1000} s`);
      }
      throw err;
    }
  }

  private async startAndWait(timeoutMs: number): Promise<void> {
    const child = startDaemon(this.paths);
    let exitStatus: number | undefined;
    child.once('exit', (code, signal) => (exitStatus = code ?? (signal ? 128 : 1)));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(POLL_MS);
      if (await this.ping()) return;
      // Exit 3: another celld won the race for this home; keep waiting for it to answer.
      if (exitStatus !== undefined && exitStatus !== DAEMON_ALREADY_RUNNING_EXIT) {
        if (await this.ping()) return;
        throw daemonStartFailed(this.paths, `it exited with status ${exitStatus}`);
      }
    }
    throw daemonStartFailed(this.paths, `its socket did not answer within ${timeoutMs / 1000} s`);
  }

  /** True when celld answers; false when nothing listens on the socket. */
  async ping(signal?: AbortSignal): Promise<boolean> {
    try {
      await this.transport.request('GET', Routes.ping, undefined, signal);
      return true;
    } catch (err) {
      if (err instanceof CellError && err.code === ErrorCodes.DAEMON_UNAVAILABLE) return false;
      throw err;
    }
  }

  info(opts: { signal?: AbortSignal } = {}): Promise<Info> {
    return this.transport.request('GET', Routes.info, undefined, opts.signal);
  }

  /** Prepares the host (packages, kernel, initramfs, built-in image, accelerator); idempotent. */
  async setup(opts: { reprobe?: boolean; onProgress?(e: SetupEvent): void; signal?: AbortSignal } = {}): Promise<void> {
    for await (const event of this.transport.stream('POST', Routes.setup + query({ reprobe: opts.reprobe }), undefined, opts.signal)) {
      if (event.type === 'progress') opts.onProgress?.(event);
    }
  }

  readonly vms = {
    list: (opts: { all?: boolean } = {}): Promise<Vm[]> => this.transport.request('GET', Routes.vms + query({ all: opts.all })),
    get: (ref: string): Promise<Vm> => this.transport.request('GET', Routes.vm(ref)),
    /** Creates and boots a VM that keeps running (its main command, if any, runs in the background). */
    create: (req: RunRequest): Promise<Vm> => this.transport.request('POST', Routes.vms, req),
    start: (ref: string): Promise<Vm> => this.transport.request('POST', Routes.vmStart(ref), {}),
    stop: (ref: string, opts: { timeoutSec?: number } = {}): Promise<Vm> =>
      this.transport.request('POST', Routes.vmStop(ref), opts.timeoutSec === undefined ? {} : { timeoutSec: opts.timeoutSec }),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> => this.transport.request('DELETE', Routes.vm(ref) + query({ force: opts.force })),
    logs: (ref: string, opts: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<LogEntry> => this.logs(ref, opts),
  };

  readonly snapshots = {
    list: (): Promise<Snapshot[]> => this.transport.request('GET', Routes.snapshots),
    get: (ref: string): Promise<Snapshot> => this.transport.request('GET', Routes.snapshot(ref)),
    take: (vmRef: string, opts: { name?: string; stop?: boolean } = {}): Promise<Snapshot> =>
      this.transport.request('POST', Routes.vmSnapshot(vmRef), opts),
    fork: (ref: string, opts: { count?: number; name?: string } = {}): Promise<Vm[]> => this.transport.request('POST', Routes.snapshotFork(ref), opts),
    restore: (vmRef: string, snapshot: string): Promise<Vm> => this.transport.request('POST', Routes.vmRestore(vmRef), { snapshot }),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> =>
      this.transport.request('DELETE', Routes.snapshot(ref) + query({ force: opts.force })),
    /** `file` is a path on celld's host. */
    export: (ref: string, file: string): Promise<{ bytes: number }> => this.transport.request('POST', Routes.snapshotExport(ref), { file }),
    import: (file: string, opts: { name?: string } = {}): Promise<Snapshot> => this.transport.request('POST', Routes.snapshotImport, { file, ...opts }),
    prune: (opts: { maxCount?: number; maxBytes?: number }): Promise<{ removed: Snapshot[] }> => this.transport.request('POST', Routes.snapshotPrune, opts),
  };

  readonly images = {
    list: (): Promise<Image[]> => this.transport.request('GET', Routes.images),
    /** `insecureRegistries`: hosts this pull may reach over plain http (besides loopback and celld's CELL_INSECURE_REGISTRIES). */
    pull: async (reference: string, opts: { platform?: string; insecureRegistries?: string[]; onProgress?(e: PullEvent): void; signal?: AbortSignal } = {}) => {
      let image: Extract<StreamEvent, { type: 'image' }>['image'] | undefined;
      const body = { reference, platform: opts.platform, ...(opts.insecureRegistries?.length ? { insecureRegistries: opts.insecureRegistries } : {}) };
      for await (const event of this.transport.stream('POST', Routes.imagePull, body, opts.signal)) {
        if (event.type === 'pull') opts.onProgress?.(event.event);
        if (event.type === 'image') image = event.image;
      }
      if (!image) throw new CellError(ErrorCodes.INTERNAL, 'the pull ended without an image');
      return image;
    },
    import: (file: string, reference?: string) => this.transport.request<{ reference: string; digest: string }>('POST', Routes.imageImport, { file, reference }),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<void> => this.transport.request('DELETE', Routes.image(ref) + query({ force: opts.force })),
    /** Pushes local image `reference` to `target` (default: the same reference). */
    push: (reference: string, target?: string, opts: { insecureRegistries?: string[] } = {}) =>
      this.transport.request<{ digest: string; reference: string }>('POST', Routes.imagePush, {
        reference,
        target,
        ...(opts.insecureRegistries?.length ? { insecureRegistries: opts.insecureRegistries } : {}),
      }),
    /** `file` is a path on celld's host. */
    export: (reference: string, file: string) => this.transport.request<{ digest: string; bytes: number }>('POST', Routes.imageExport, { reference, file }),
    prune: (opts: { maxBytes?: number } = {}) => this.transport.request<{ evicted: string[]; bytesFreed: number }>('POST', Routes.imagePrune, opts),
  };

  /**
   * Actions: one command in a fresh VM from an image or a snapshot, its output streamed to the
   * handlers. With `cache: true` the snapshot it leaves is stored under a key made of everything
   * that could change the result; the same action again returns that snapshot and runs nothing.
   */
  readonly actions = {
    run: (req: ActionRequest, handlers: OutputHandlers & { onPlan?(plan: { key: string | null; cached: boolean }): void } = {}): Promise<ActionResult> =>
      resultStream(this.transport.stream('POST', Routes.actions, req, handlers.signal), handlers, 'result', 'action', (event) => {
        if (event.type === 'action') handlers.onPlan?.({ key: event.key, cached: event.cached });
      }),
  };

  /** `cell build`: runs a build file (a path on celld's host) step by step, cached per step. */
  readonly builds = {
    build: (req: BuildRequest, handlers: OutputHandlers & { onEvent?(event: BuildStreamEvent): void } = {}): Promise<BuildSummary> =>
      resultStream(this.transport.stream('POST', Routes.builds, req, handlers.signal), handlers, 'built', 'build', (event) => {
        if (isBuildEvent(event)) handlers.onEvent?.(event);
      }),
  };

  /** Templates: a build plus variants, each built into revisions (docs/templates.md). */
  readonly templates = {
    /** Builds every variant of a template file (a path on celld's host); `snapshot` also stores warm-start snapshots. */
    build: (
      req: TemplateBuildRequest,
      handlers: OutputHandlers & { onEvent?(event: BuildStreamEvent | TemplateVariantEvent): void } = {},
    ): Promise<TemplateBuildSummary> =>
      resultStream(this.transport.stream('POST', Routes.templateBuild, req, handlers.signal), handlers, 'templates', 'template build', (event) => {
        if (event.type === 'variant' || isBuildEvent(event)) handlers.onEvent?.(event);
      }),
    list: (): Promise<TemplateView[]> => this.transport.request('GET', Routes.templates),
    /** A variant by name, `TEMPLATE_ID:ROLE`, or a template id with one variant; with all its revisions. */
    get: (ref: string): Promise<TemplateView> => this.transport.request('GET', Routes.template(ref)),
    remove: (ref: string, opts: { force?: boolean } = {}): Promise<{ removed: string[] }> =>
      this.transport.request('DELETE', Routes.template(ref) + query({ force: opts.force })),
  };

  readonly cache = {
    /** Least recently used first. */
    list: (): Promise<CacheEntry[]> => this.transport.request('GET', Routes.cache),
    prune: (opts: CachePruneRequest): Promise<{ removed: { key: string; snapshotId: string; description: string }[] }> =>
      this.transport.request('POST', Routes.cachePrune, opts),
  };

  /**
   * Files of a running VM. Guest paths are absolute; host paths (copyIn/copyOut) are resolved
   * against this process's working directory, and celld, on the same host, reads or writes them.
   */
  readonly files = {
    stat: (ref: string, path: string, opts: { follow?: boolean } = {}): Promise<GuestFileStat> =>
      this.transport.request('GET', Routes.vmFileStat(ref) + params({ path, follow: opts.follow })),
    /** A guest file's bytes as they arrive. Leaving the loop early (or `signal`) cancels the read. */
    readStream: (ref: string, path: string, opts: { maxBytes?: number; signal?: AbortSignal } = {}): AsyncGenerator<Buffer> =>
      this.guestFileChunks(ref, path, opts),
    /** A guest file, whole; a file over `maxBytes` is a `size_limit` error. */
    read: async (ref: string, path: string, opts: { maxBytes?: number; signal?: AbortSignal } = {}): Promise<Buffer> => {
      const chunks: Buffer[] = [];
      for await (const chunk of this.files.readStream(ref, path, opts)) chunks.push(chunk);
      return Buffer.concat(chunks);
    },
    /** Creates or atomically replaces a guest file (parents are created); mode defaults to 0644, owner root. */
    write: (ref: string, path: string, data: string | Uint8Array | AsyncIterable<Buffer | string>, opts: { mode?: number; uid?: number; gid?: number } = {}): Promise<void> => {
      const body = typeof data === 'string' || data instanceof Uint8Array ? oneChunk(Buffer.from(data)) : data;
      return this.transport.upload(Routes.vmFileContent(ref) + params({ path, ...opts }), body);
    },
    /** `cell cp HOST VM:PATH`: a host file or directory into the VM (docker cp's rules for the destination). */
    copyIn: (ref: string, hostPath: string, guestPath: string): Promise<CopyResult> =>
      this.transport.request('POST', Routes.vmCopyIn(ref), { hostPath: hostPathOf(hostPath), guestPath }),
    /** `cell cp VM:PATH HOST`: a file or directory of the VM onto the host, owned by `owner` when given. */
    copyOut: (ref: string, guestPath: string, hostPath: string, owner?: { uid: number; gid: number }): Promise<CopyResult> =>
      this.transport.request('POST', Routes.vmCopyOut(ref), { guestPath, hostPath: hostPathOf(hostPath), ...owner }),
  };

  readonly registries = {
    login: (registry: string, username: string, password: string, opts: { insecureRegistries?: string[] } = {}) =>
      this.transport.request<{ ok: boolean }>('POST', Routes.login, {
        registry,
        username,
        password,
        ...(opts.insecureRegistries?.length ? { insecureRegistries: opts.insecureRegistries } : {}),
      }),
    logout: (registry: string) => this.transport.request<{ removed: boolean }>('POST', Routes.logout, { registry }),
  };

  /**
   * `cell run`: boots a VM, runs its command with output streamed to the handlers as it arrives,
   * then stops the VM (and removes it with `autoRemove`). Aborting `signal` kills the command and
   * stops the VM; the promise then rejects with the signal's reason.
   */
  run(req: RunRequest, handlers: RunHandlers = {}): Promise<CommandResult & { vm: Vm }> {
    return runStream(this.transport.stream('POST', Routes.vmRun, req, handlers.signal), handlers);
  }

  /**
   * Runs a command in a running VM. With `stdin`, its bytes are streamed to the command (the end
   * of the iterable closes the command's stdin). Aborting `signal` kills the command.
   */
  exec(ref: string, req: Omit<ExecRequest, 'stdin'>, handlers: ExecHandlers = {}): Promise<CommandResult> {
    const body: ExecRequest = handlers.stdin ? { ...req, stdin: true } : req;
    return execStream(this.transport, this.transport.stream('POST', Routes.vmExec(ref), body, handlers.signal), handlers);
  }

  /** A VM's main-command output: what is there, then (with `follow`) new lines until it stops. */
  async *logs(ref: string, opts: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<LogEntry> {
    for await (const event of this.transport.stream('GET', Routes.vmLogs(ref) + query({ follow: opts.follow }), undefined, opts.signal)) {
      if (event.type === 'log') yield { time: event.time, stream: event.stream, text: event.text };
    }
  }

  private async *guestFileChunks(ref: string, path: string, opts: { maxBytes?: number; signal?: AbortSignal }): AsyncGenerator<Buffer> {
    const url = Routes.vmFileContent(ref) + params({ path, maxBytes: opts.maxBytes });
    for await (const event of this.transport.stream('GET', url, undefined, opts.signal)) {
      if (event.type === 'data') yield Buffer.from(event.data, 'base64');
    }
  }

  /** Releases idle connections (they do not keep the process alive either way). */
  close(): void {
    this.transport.close();
  }
}

const BUILD_EVENTS: ReadonlySet<string> = new Set(['base', 'step', 'step-done', 'step-failed', 'built']);

function isBuildEvent(event: StreamEvent): event is BuildStreamEvent {
  return BUILD_EVENTS.has(event.type);
}

/** A query string of the defined values (`?path=%2Fetc&maxBytes=10`). */
function params(values: Record<string, string | number | boolean | undefined>): string {
  const set = Object.entries(values).filter((e): e is [string, string | number | boolean] => e[1] !== undefined && e[1] !== false);
  return set.length ? `?${new URLSearchParams(set.map(([k, v]): [string, string] => [k, String(v)])).toString()}` : '';
}

async function* oneChunk(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}

/** An absolute host path; a trailing "/." (copy a directory's contents) survives resolving. */
function hostPathOf(path: string): string {
  const contents = path === '.' || path.endsWith('/.');
  const resolved = resolveHostPath(path);
  return contents ? `${resolved === '/' ? '' : resolved}/.` : resolved;
}
