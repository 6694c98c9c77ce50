import { readFileSync } from 'node:fs';
import { Api } from '../api/routes.js';
import type { DiskUsage, Info } from '../api/system.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { cellPaths, defaultHome, type CellPaths } from '../domain/paths.js';
import { ActionsClient, BuildsClient, CacheClient } from './builds.js';
import type { SetupEvent } from './commands.js';
import { DAEMON_ALREADY_RUNNING_EXIT, daemonStartFailed, startDaemon } from './daemon.js';
import { isDaemonUnavailable } from './errors.js';
import { FilesClient } from './files.js';
import { ImagesClient, RegistriesClient } from './images.js';
import type { RequestOptions } from './options.js';
import { SnapshotsClient } from './snapshots.js';
import { TemplatesClient } from './templates.js';
import { NetworksClient } from './networks.js';
import { VolumesClient } from './volumes.js';
import { TokensClient } from './tokens.js';
import { EventsClient } from './events.js';
import { Transport } from './transport.js';
import { VmsClient } from './vms.js';

export interface ConnectOptions extends RequestOptions {
  /** CELL_HOME (default: $CELL_HOME, /var/lib/cellvm as root, else ~/.local/share/cellvm). */
  home?: string;
  /** celld's socket (default: CELL_HOME/celld.sock). celld is started on demand only for the default. */
  socketPath?: string;
  /** Start celld when it is not running (default true). */
  autoStart?: boolean;
  /** How long to wait for celld to answer, including a fresh start (default 10 000). */
  timeoutMs?: number;
  /** Gives up waiting (rejects with the signal's reason); a celld already started keeps running. */
  signal?: AbortSignal;
  /**
   * Resolve at once, without asking celld whether it is up: the first request finds out, and
   * starts celld (then is sent again) when nothing listens. Saves a round trip per process (the
   * CLI's); the first request then may take a celld start-up, up to `timeoutMs`.
   */
  lazy?: boolean;
  /**
   * A celld elsewhere, over its TCP listener (docs/remote.md): `https://host:7070` (default
   * CELL_HOST). Never started on demand; host paths are refused there (stream contents instead).
   */
  url?: string;
  /** Its bearer token (default CELL_TOKEN). */
  token?: string;
  /** Pins celld's self-signed certificate by its SHA-256 fingerprint (default CELL_TLS_FINGERPRINT). */
  tlsFingerprint?: string;
  /** PEM certificates to trust instead of the system's (default: the file CELL_TLS_CA names). */
  ca?: string;
}

export interface SetupOptions extends RequestOptions {
  /** Probe the accelerator (KVM or TCG) again instead of using the cached verdict. */
  reprobe?: boolean;
  onProgress?(e: SetupEvent): void;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const POLL_MS = 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The typed client of celld's HTTP API: one sub-client per resource, all on one transport.
 *
 *   const client = await CellClient.connect();
 *   const vm = await client.vms.create({ image: 'busybox' });
 *   const { exitCode } = await client.vms.exec(vm.id, { cmd: ['uname', '-a'] }, { onStdout: (c) => process.stdout.write(c) });
 */
export class CellClient {
  readonly vms: VmsClient;
  readonly files: FilesClient;
  readonly snapshots: SnapshotsClient;
  readonly images: ImagesClient;
  readonly registries: RegistriesClient;
  readonly actions: ActionsClient;
  readonly builds: BuildsClient;
  readonly cache: CacheClient;
  readonly templates: TemplatesClient;
  readonly networks: NetworksClient;
  readonly volumes: VolumesClient;
  /** API tokens for celld's TCP listener (docs/remote.md). */
  readonly tokens: TokensClient;
  readonly events: EventsClient;

  private constructor(
    readonly transport: Transport,
    readonly paths: CellPaths,
  ) {
    this.vms = new VmsClient(transport);
    this.files = new FilesClient(transport);
    this.snapshots = new SnapshotsClient(transport);
    this.images = new ImagesClient(transport);
    this.registries = new RegistriesClient(transport);
    this.actions = new ActionsClient(transport);
    this.builds = new BuildsClient(transport);
    this.cache = new CacheClient(transport);
    this.templates = new TemplatesClient(transport);
    this.networks = new NetworksClient(transport);
    this.volumes = new VolumesClient(transport);
    this.tokens = new TokensClient(transport);
    this.events = new EventsClient(transport);
  }

  /**
   * Connects to celld, starting it when it is not running. Safe when many processes do this at
   * once: only one celld wins the home's lock, every client waits for whichever one that is.
   */
  static async connect(opts: ConnectOptions = {}): Promise<CellClient> {
    const paths = cellPaths(opts.home ?? defaultHome());
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const url = opts.url ?? (opts.socketPath ? undefined : process.env.CELL_HOST || undefined);
    if (url) return CellClient.connectRemote(url, opts, paths, timeoutMs);
    const socketPath = opts.socketPath ?? paths.socket;
    const client = new CellClient(new Transport({ socketPath }), paths);
    if (opts.lazy && opts.autoStart !== false && socketPath === paths.socket) {
      client.transport.whenNoDaemon(() => client.startAndWait(timeoutMs, opts.signal));
      return client;
    }
    try {
      if (await client.ping({ timeoutMs, signal: opts.signal })) return client;
      if (opts.autoStart === false || socketPath !== paths.socket) {
        throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld is not running (nothing answers on ${socketPath})`);
      }
      await client.startAndWait(timeoutMs, opts.signal);
      return client;
    } catch (err) {
      client.close();
      if (err instanceof DOMException && err.name === 'TimeoutError') {
        throw new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `celld on ${socketPath} does not answer within ${timeoutMs / 1000} s`);
      }
      throw err;
    }
  }

  private static async connectRemote(url: string, opts: ConnectOptions, paths: CellPaths, timeoutMs: number): Promise<CellClient> {
    const { remoteEndpoint } = await import('./remote.js');
    const caFile = process.env.CELL_TLS_CA;
    let ca = opts.ca;
    if (!ca && caFile) {
      try {
        ca = readFileSync(caFile, 'utf8');
      } catch (err) {
        throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot read CELL_TLS_CA ${caFile}: ${(err as Error).message}`);
      }
    }
    const endpoint = await remoteEndpoint(
      { url, token: opts.token ?? process.env.CELL_TOKEN, tlsFingerprint: opts.tlsFingerprint ?? (process.env.CELL_TLS_FINGERPRINT || undefined), ca },
      timeoutMs,
    );
    const client = new CellClient(new Transport(endpoint), paths);
    if (opts.lazy) return client;
    try {
      // Its own error, not ping's false: why a remote celld cannot be reached is worth saying.
      await client.transport.call(Api.system.ping, {}, { timeoutMs, signal: opts.signal });
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  private async startAndWait(timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
    const child = startDaemon(this.paths);
    let exitStatus: number | undefined;
    child.once('exit', (code, signal) => (exitStatus = code ?? (signal ? 128 : 1)));
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await sleep(POLL_MS);
      signal?.throwIfAborted();
      if (await this.ping({ signal })) return;
      // Exit 3: another celld won the race for this home; keep waiting for it to answer.
      if (exitStatus !== undefined && exitStatus !== DAEMON_ALREADY_RUNNING_EXIT) {
        if (await this.ping()) return;
        throw daemonStartFailed(this.paths, `it exited with status ${exitStatus}`);
      }
    }
    throw daemonStartFailed(this.paths, `its socket did not answer within ${timeoutMs / 1000} s`);
  }

  /** True when celld answers; false when nothing listens on the socket. */
  async ping(opts: RequestOptions = {}): Promise<boolean> {
    try {
      await this.transport.call(Api.system.ping, {}, opts);
      return true;
    } catch (err) {
      if (isDaemonUnavailable(err)) return false;
      throw err;
    }
  }

  info(opts: RequestOptions = {}): Promise<Info> {
    return this.transport.call(Api.system.info, {}, opts);
  }

  /** What celld's home holds by kind: logical bytes and really used ones (`cell system df`). */
  diskUsage(opts: RequestOptions = {}): Promise<DiskUsage> {
    return this.transport.call(Api.system.df, {}, opts);
  }

  /** Prepares the host (packages, kernel, initramfs, built-in image, accelerator); idempotent. */
  async setup(opts: SetupOptions = {}): Promise<void> {
    for await (const event of this.transport.stream(Api.system.setup, { query: { reprobe: opts.reprobe } }, opts)) {
      if (event.type === 'progress') opts.onProgress?.(event);
    }
  }

  /** celld's API as an OpenAPI 3.1 document (generated from the same route table as this client). */
  openApi(opts: RequestOptions = {}): Promise<{ openapi: string } & Record<string, unknown>> {
    return this.transport.call(Api.system.openapi, {}, opts);
  }

  /** Releases idle connections (they do not keep the process alive either way). */
  close(): void {
    this.transport.close();
  }
}
