import { preferPageSizedCopies } from '../host/clone-file.js';
import { diskUsage, type DiskUsage } from './disk-usage.js';
import type { CellConfig } from '../domain/config.js';
import { homeTmpPrefix, type CellPaths } from '../domain/paths.js';
import { ActionCacheStore } from '../store/action-cache-store.js';
import { openDatabase } from '../store/database.js';
import { ensureCellHome, ensureOwnDir, ensurePrivateDir, ensurePrivateFile, narrowFileMode } from '../store/private-files.js';
import { ImageStore } from '../store/image-store.js';
import { SnapshotStore } from '../store/snapshot-store.js';
import { TemplateStore } from '../store/template-store.js';
import { VmStore } from '../store/vm-store.js';
import { PoolStore } from '../store/pool-store.js';
import { VolumeStore } from '../store/volume-store.js';
import { TokenStore } from '../store/token-store.js';
import { Tokens } from './tokens.js';
import { EventStore } from '../store/event-store.js';
import { EventFeed } from './event-feed.js';
import { HealthMonitor } from './health-monitor.js';
import { TimeoutMonitor } from './vm-timeouts.js';
import { Suspends } from './vm-suspend.js';
import { Consoles } from './vm-console.js';
import { Volumes } from './volumes.js';
import { waitForVm, type WaitOptions } from './vm-wait.js';
import type { VmRecord } from '../domain/vm.js';
import type { Backend } from '../vmm/backend.js';
import { QemuBackend } from '../vmm/qemu/backend.js';
import { Actions } from './actions.js';
import { Builds } from './builds.js';
import { ConsoleLogCap } from './console-log-cap.js';
import type { EngineContext, EngineStores, EngineLog, HostProvider } from './context.js';
import { HostReadiness, type ProgressListener } from './host-readiness.js';
import { Images } from './images.js';
import { LiveMachines } from './live-machines.js';
import { KeyedLocks } from './locks.js';
import { UserNetworking } from './user-networking.js';
import { HostNetworking, NoNetworking, type Networking } from './networking.js';
import { Networks } from './networks.js';
import { NetworkStore } from '../store/lease-store.js';
import { loadConfig, reconcile, removeHalfMade, sweepOrphans } from './recovery.js';
import { Runs } from './runs.js';
import { finishRestores } from './restore-intent.js';
import { recoverSnapshots } from './snapshot-recovery.js';
import { Snapshots } from './snapshots.js';
import { SparePool, type PoolsSummary, type SparePoolOptions } from './spare-pool.js';
import { Templates } from './templates.js';
import { DEFAULT_LOG_MAX_BYTES } from './vm-logs.js';
import { Vms } from './vms.js';
import { VmStats } from './vm-stats.js';

export interface EngineInfo {
  home: string;
  cacheDir: string;
  accelerator: string;
  acceleratorReason: string;
  qemuVersion: string;
  guestKernel: string;
  vms: Record<string, number>;
  images: number;
  /** Restored, paused QEMUs waiting to become forks (see spare-pool.ts). */
  spares: number;
  /** Snapshots' pools together: spares ready, their memory and its cap (docs/pools.md). */
  pools: PoolsSummary;
  /** config.json / CELL_IMAGE_CACHE_MAX_BYTES; null = no cap. */
  imageCacheMaxBytes: number | null;
  network: { available: boolean; reason: string };
}

/** What `Engine.open` may be given instead of the real thing (tests: a fake backend and host). */
export interface EngineDeps {
  backend?: Backend;
  host?: HostProvider;
  config?: CellConfig;
  spares?: SparePoolOptions;
  log?: EngineLog;
  checkpoint?: (step: string) => Promise<void>;
  /** VMs' networking; by default the host's kernel's when celld is root, QEMU's user mode when not (CELL_NETWORK=off|user). */
  network?: Networking;
}

/** The host's networking (as root), QEMU's user-mode networking (without root), or none (CELL_NETWORK=off). */
export function defaultNetworking(
  home: string,
  stores: Pick<EngineStores, 'networks' | 'vms'>,
  env: NodeJS.ProcessEnv = process.env,
  uid = process.getuid?.(),
): Networking {
  if (env.CELL_NETWORK === 'off') return new NoNetworking('networking is off on this celld (CELL_NETWORK=off)');
  // Without root there are no namespaces, bridges or taps: QEMU's own user-mode stack instead.
  if (env.CELL_NETWORK === 'user' || uid !== 0) return new UserNetworking(stores.networks, stores.vms);
  return new HostNetworking(home, stores.networks, stores.vms, { subnet: env.CELL_SUBNET });
}

const STDERR_LOG: EngineLog = {
  info: (message) => process.stderr.write(`${message}\n`),
  warn: (message) => process.stderr.write(`warning: ${message}\n`),
};

/** CELL_CRASH_AT=STEP: celld kills itself (SIGKILL, as `kill -9`) when it reaches that step. */
function crashDrill(step: string | undefined): (at: string) => Promise<void> {
  if (!step) return async () => {};
  return async (at) => {
    if (at === step) process.kill(process.pid, 'SIGKILL');
  };
}

/**
 * The composition root: builds the context and the services, each given exactly the siblings it
 * calls, in one direction:
 *
 *   Images ─► Vms ─► SparePool ─► Snapshots ─► Actions ─► Builds ─► Templates ─► Runs
 *
 * and keeps open, close and info. Callers (the server) use the services directly.
 */
export class Engine {
  private constructor(
    private readonly ctx: EngineContext,
    readonly images: Images,
    readonly vms: Vms,
    readonly spares: SparePool,
    readonly snapshots: Snapshots,
    readonly actions: Actions,
    readonly builds: Builds,
    readonly templates: Templates,
    readonly runs: Runs,
    /** @see console-log-cap.ts */
    readonly consoleCap: ConsoleLogCap,
    readonly networks: Networks,
    readonly events: EventFeed,
    private readonly health: HealthMonitor,
    private readonly timeouts: TimeoutMonitor,
    /** `cell stats`: host-side CPU, memory, disk and network of VMs (vm-stats.ts). */
    readonly stats: VmStats,
    /** `cell pause --to-disk` and the unpause that restores it (vm-suspend.ts). */
    readonly suspends: Suspends,
    /** `cell console`: the serial consoles (vm-console.ts). */
    readonly consoles: Consoles,
    /** API tokens for the TCP listener (tokens.ts). */
    readonly tokens: Tokens,
  ) {}

  /**
   * celld's first step, before it writes anything in CELL_HOME: the home must be ours (refused if
   * not) and private, 0700, or 0710 with `socketGroup` so that group's members reach celld.sock
   * and nothing else; celld.log 0600.
   */
  static prepareHome(paths: CellPaths, socketGroup: number | null): void {
    ensureCellHome(paths.home, socketGroup);
    ensurePrivateFile(paths.daemonLog);
  }

  static async open(paths: CellPaths, deps: EngineDeps = {}): Promise<Engine> {
    // Private state (docs: README "Who may use celld"): the home and its folders 0700, files 0600;
    // the guests' RAM folder on tmpfs is refused if anyone else made it or may get in.
    ensureCellHome(paths.home);
    for (const [dir, what] of [[paths.vms, 'the VMs folder'], [paths.snapshots, 'the snapshots folder'], [paths.spares, 'the spares folder']] as const) {
      ensureOwnDir(dir, what);
    }
    for (const file of [paths.daemonLog, paths.daemonPid, paths.config]) narrowFileMode(file);
    ensurePrivateDir(paths.memory, 'the guest RAM folder', ' (with no VM running)');
    const db = openDatabase(paths.db);
    const events = new EventStore(db);
    const stores = {
      events,
      vms: new VmStore(db, events),
      images: new ImageStore(db),
      snapshots: new SnapshotStore(db, events),
      actionCache: new ActionCacheStore(db),
      templates: new TemplateStore(db),
      networks: new NetworkStore(db),
      volumes: new VolumeStore(db),
      pools: new PoolStore(db),
    };
    const backend = deps.backend ?? new QemuBackend({ saveDirPrefix: homeTmpPrefix(paths.home, 'mig') });
    // The machines' end is reported to the VMs service, made below: a late-bound callback.
    let vms: Vms | undefined;
    const config = deps.config ?? (await loadConfig(paths.config));
    const ctx: EngineContext = {
      paths,
      db,
      stores,
      config,
      host: deps.host ?? new HostReadiness(paths.cache, stores.images, config.guestKernel),
      backend,
      live: new LiveMachines(
        backend,
        (id, expected) => vms?.onMachineGone(id, expected),
        (id, pid, name) => vms?.onGuestOom(id, pid, name),
      ),
      network: deps.network ?? defaultNetworking(paths.home, stores),
      locks: new KeyedLocks(),
      log: deps.log ?? STDERR_LOG,
      checkpoint: deps.checkpoint ?? crashDrill(process.env.CELL_CRASH_AT),
    };
    const images = new Images(ctx);
    const volumes = new Volumes(ctx);
    vms = new Vms(ctx, images, volumes);
    const spares = new SparePool(ctx, deps.spares);
    const snapshots = new Snapshots(ctx, vms, spares, images);
    const actions = new Actions(ctx, vms, snapshots, images);
    const builds = new Builds(ctx, actions, snapshots);
    const templates = new Templates(ctx, vms, snapshots, builds, images);
    const runs = new Runs(ctx, vms, snapshots, templates);
    const consoleCap = new ConsoleLogCap(
      () => ctx.live.ids().map((id) => backend.files(ctx.live.get(id)!.dir).serialLog),
      ctx.config.logMaxBytes ?? DEFAULT_LOG_MAX_BYTES,
    );
    const networks = new Networks(ctx, vms);
    const feed = new EventFeed(events);
    const health = new HealthMonitor(ctx, vms, feed);
    const stats = new VmStats({ vms, live: ctx.live, network: ctx.network });
    const suspends = new Suspends(ctx, vms, snapshots);
    const timeouts = new TimeoutMonitor(ctx, vms, (id) => suspends.suspend(id));
    const engine = new Engine(ctx, images, vms, spares, snapshots, actions, builds, templates, runs, consoleCap, networks, feed, health, timeouts, stats, suspends, new Consoles(ctx, vms), new Tokens(new TokenStore(db)));
    await reconcile(ctx);
    await sweepOrphans(ctx);
    const cowHint = await preferPageSizedCopies(paths.snapshots);
    if (cowHint) ctx.log.warn(cowHint);
    await vms.volumes.sweep().catch((err: unknown) => ctx.log.warn(`sweeping volumes/ at start-up failed: ${(err as Error).message}`));
    await ctx.network.sweep(new Set(ctx.live.ids()));
    // Half-made VMs go first: a snapshot an action's VM was taking is then undone, not finished
    // into a snapshot nobody holds.
    const halfMade = await removeHalfMade(ctx, vms);
    if (halfMade.length > 0) ctx.log.warn(`removed VMs a stopped celld left half-made: ${halfMade.join(', ')}`);
    await recoverSnapshots(ctx, vms, images);
    const restored = await finishRestores(ctx, vms);
    if (restored.length > 0) ctx.log.warn(`finished restores a stopped celld left half-way: ${restored.join(', ')}`);
    // Last: VMs and snapshots removed above unpinned what they held.
    await images.sweepAfterStart().catch((err: unknown) => ctx.log.warn(`sweeping the image store at start-up failed: ${(err as Error).message}`));
    consoleCap.start();
    // After reconcile: the VMs a previous celld left running are probed on, with the health they had.
    health.start();
    // Limits that ran out while no celld watched are enforced now.
    timeouts.start();
    // Pools are settings: their spares died with the last celld and are made again, in the background.
    spares.resumePools();
    return engine;
  }

  setup(onProgress?: ProgressListener, reprobe = false) {
    return this.ctx.host.ensure(onProgress, { reprobe });
  }

  async info(): Promise<EngineInfo> {
    const ready = await this.ctx.host.ensure();
    return {
      home: this.ctx.paths.home,
      cacheDir: this.ctx.paths.cache,
      accelerator: ready.accelerator.accelerator,
      acceleratorReason: ready.accelerator.reason,
      qemuVersion: ready.qemuVersion,
      guestKernel: ready.assets.kernel.release,
      vms: this.ctx.stores.vms.countByState(),
      images: this.ctx.stores.images.list().length,
      spares: this.spares.count(),
      pools: await this.spares.summary(),
      imageCacheMaxBytes: this.ctx.config.imageCacheMaxBytes ?? null,
      network: { ...this.ctx.network.status },
    };
  }

  /**
   * Ends what only this daemon holds (spares) and lets go of the machines without touching them:
   * VMs outlive celld, and the next one reconnects.
   */
  /** `cell system df` (engine/disk-usage.ts). */
  diskUsage(): Promise<DiskUsage> {
    return diskUsage(this.ctx);
  }

  /** `cell wait`: until VM `ref` has stopped or is healthy (engine/vm-wait.ts). */
  wait(ref: string, opts: WaitOptions): Promise<VmRecord> {
    return waitForVm(this.ctx.stores, this.vms.resolve(ref).id, opts);
  }

  async close(): Promise<void> {
    this.health.close();
    this.timeouts.close();
    this.consoles.closeAll();
    this.runs.sessions.closeAll();
    this.consoleCap.stop();
    await this.spares.closeAll();
    // Published ports close with celld (VMs keep running; the next celld serves them again).
    await this.ctx.network.close();
    this.ctx.live.detachAll();
    await this.ctx.locks.drain();
    this.ctx.db.close();
  }
}
