import { randomBytes } from 'node:crypto';
import { isAbsolute, posix } from 'node:path';
import {
  actionCacheKey,
  cacheEntryFor,
  type ActionResult,
  type ActionSpec,
  type CachePolicy,
  type CacheEntry,
} from '../domain/action.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { CELLD_HOST_FS, hostPathError, type HostFs } from './host-fs.js';
import { shortId } from '../domain/ids.js';
import { assertCompatible, compatKeyHash, type SnapshotRecord } from '../domain/snapshot.js';
import { DEFAULT_CPUS, DEFAULT_MEMORY_MIB, mergeEnv, validateEnv, validateResources, type VmRecord } from '../domain/vm.js';
import { resolveImageUser } from '../image/image-users.js';
import { compatKey, type EngineContext } from './context.js';
import type { Images } from './images.js';
import type { Snapshots } from './snapshots.js';
import type { Vms } from './vms.js';
import { parseUser, runGuestCommand } from './exec-runner.js';
import { basename, join } from 'node:path';
import type { AgentClient } from '../agent/client.js';
import { copyIntoGuest } from './guest-files.js';
import { NULL_SINK, type ExecResult, type OutputSink } from './output.js';
import { awaitReady } from './ready-check.js';
import { treeHash } from './tree-hash.js';

export interface ActionRunOptions {
  /** Take a snapshot after a successful command even when the policy does not cache. */
  snapshot?: boolean;
  sink?: OutputSink;
  signal?: AbortSignal;
  /** Name of the VM the action runs in (default `action-<hex>`). */
  vmName?: string;
  /** Told once the cache was consulted: whether the action will run. */
  onPlan?(plan: { key: string | null; cached: boolean }): void;
  /** Whose file access reads the host path a copy names (engine/host-fs.ts); celld's own by default. */
  host?: HostFs;
}

/** The source and settings of an action, resolved against what is on this host. */
interface Resolved {
  kind: 'image' | 'snapshot';
  /** Image reference or snapshot id. */
  ref: string;
  sourceKey: string;
  snapshot?: SnapshotRecord;
  env: string[];
  workingDir: string;
  user: string;
  cpus: number;
  memoryMib: number;
  /** An image source's volume mounts, as given (a snapshot's are in its spec). */
  volumes?: string[];
  inject: { hostPath: string; guestPath: string; treeHash: string; isDirectory: boolean } | null;
  compat: string;
}


/**
 * Actions: one command in a fresh VM, optionally cached. A cached action's snapshot is stored
 * under its key; the same action again returns that snapshot and runs nothing. Only actions that
 * exit 0 are cached; identical actions running at once are serialised on their key so the second
 * one is a hit, while different actions (siblings of one parent) run side by side, each with its
 * own snapshot.
 */
export class Actions {
  constructor(
    private readonly ctx: EngineContext,
    private readonly vms: Vms,
    private readonly snapshots: Snapshots,
    private readonly images: Images,
  ) {}

  async run(spec: ActionSpec, policy: CachePolicy = { mode: 'none' }, opts: ActionRunOptions = {}): Promise<ActionResult> {
    const started = performance.now();
    const resolved = await this.resolve(spec, opts.host ?? CELLD_HOST_FS);
    if (policy.mode === 'none') {
      opts.onPlan?.({ key: null, cached: false });
      return this.execute(spec, resolved, null, opts, started);
    }
    const key = actionCacheKey({
      source: resolved.sourceKey,
      cmd: spec.cmd,
      env: resolved.env,
      workingDir: resolved.workingDir,
      user: resolved.user,
      timeoutSec: spec.timeoutSec ?? 0,
      cpus: resolved.cpus,
      memoryMib: resolved.memoryMib,
      ...(resolved.volumes?.length ? { volumes: resolved.volumes } : {}),
      detach: spec.detach ?? false,
      ready: spec.ready?.cmd ?? null,
      inject: resolved.inject ? { treeHash: resolved.inject.treeHash, guestPath: resolved.inject.guestPath } : null,
      compat: resolved.compat,
      salt: policy.salt,
    });
    return this.ctx.locks.run(`action:${key}`, async () => {
      const hit = policy.refresh ? undefined : this.lookup(key);
      if (hit) {
        opts.onPlan?.({ key, cached: true });
        return { exitCode: 0, snapshot: hit, cached: true, key, durationMs: performance.now() - started };
      }
      opts.onPlan?.({ key, cached: false });
      return this.execute(spec, resolved, { key, replace: policy.refresh ?? false }, opts, started);
    });
  }

  /** Cache entries, least recently used first, with the snapshot each holds. */
  listCache(): { entry: CacheEntry; snapshot: SnapshotRecord | undefined }[] {
    return this.ctx.stores.actionCache.list().map((entry) => ({ entry, snapshot: this.snapshots.get(entry.snapshotId) }));
  }

  /**
   * Drops least recently used entries, with their snapshots, until at most `maxCount` remain,
   * their snapshots hold at most `maxBytes`, and none was last used longer than `maxAgeMs` ago. An
   * entry whose snapshot something else still needs (a VM on it, a later step's snapshot on top)
   * stays until that goes: later steps are dropped before the steps they grew from.
   */
  async pruneCache(opts: { maxCount?: number; maxBytes?: number; maxAgeMs?: number }): Promise<CacheEntry[]> {
    const removed: CacheEntry[] = [];
    const size = (s: SnapshotRecord | undefined) => (s ? s.stateBytes + s.memoryBytes + s.diskBytes : 0);
    for (;;) {
      const all = this.listCache();
      const total = all.reduce((sum, e) => sum + size(e.snapshot), 0);
      const cutoff = opts.maxAgeMs !== undefined ? Date.now() - opts.maxAgeMs : -Infinity;
      const overCount = opts.maxCount !== undefined && all.length > opts.maxCount;
      const overBytes = opts.maxBytes !== undefined && total > opts.maxBytes;
      const candidates = all.filter(({ entry, snapshot }) => !snapshot || this.snapshots.removable(snapshot.id, entry.key));
      const victim =
        overCount || overBytes ? candidates[0] : candidates.find(({ entry }) => Date.parse(entry.lastUsed) < cutoff);
      if (!victim) return removed;
      if (victim.snapshot) await this.snapshots.remove(victim.snapshot.id, true);
      this.ctx.stores.actionCache.delete(victim.entry.key);
      removed.push(victim.entry);
    }
  }

  /** The cached snapshot for a key; a stale entry (its snapshot removed by force) is dropped. */
  lookup(key: string): SnapshotRecord | undefined {
    const cache = this.ctx.stores.actionCache;
    const entry = cache.get(key);
    if (!entry) return undefined;
    const snapshot = this.snapshots.get(entry.snapshotId);
    if (!snapshot) {
      cache.delete(key);
      return undefined;
    }
    cache.recordHit(key, new Date().toISOString());
    return snapshot;
  }

  private async resolve(spec: ActionSpec, host: HostFs): Promise<Resolved> {
    validateEnv(spec.env ?? []);
    if (spec.cmd.length === 0 && !spec.inject) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'an action needs a command or files to copy in');
    }
    if (spec.detach && !spec.ready) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'a detached command needs a ready check (how else would we know it is up?)');
    }
    if (spec.timeoutSec !== undefined && (!Number.isFinite(spec.timeoutSec) || spec.timeoutSec < 0)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `timeout ${spec.timeoutSec} must be a number of seconds >= 0`);
    }
    const ready = await this.ctx.host.ensure();
    const compat = compatKeyHash(compatKey(this.ctx, ready));
    let resolved: Omit<Resolved, 'inject'>;
    if ('snapshot' in spec.source) {
      if (spec.cpus !== undefined || spec.memoryMib !== undefined) {
        throw new CellError(ErrorCodes.INVALID_ARGUMENT, "an action on a snapshot has the snapshot's CPUs and memory");
      }
      if (spec.volumes?.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, "an action on a snapshot mounts the snapshot's volumes and no others");
      const snapshot = this.snapshots.resolve(spec.source.snapshot);
      assertCompatible(snapshot.compat, compatKey(this.ctx, ready), snapshot.name);
      const user = spec.user || snapshot.spec.user;
      parseUser(user);
      resolved = {
        kind: 'snapshot',
        ref: snapshot.id,
        sourceKey: `snapshot:${snapshot.id}`,
        snapshot,
        env: mergeEnv(snapshot.spec.env, spec.env ?? []),
        workingDir: spec.workingDir || snapshot.spec.workingDir,
        user,
        cpus: snapshot.spec.cpus,
        memoryMib: snapshot.spec.memoryMib,
        compat,
      };
    } else {
      const cpus = spec.cpus ?? DEFAULT_CPUS;
      const memoryMib = spec.memoryMib ?? DEFAULT_MEMORY_MIB;
      validateResources(cpus, memoryMib);
      const image = await this.images.ensure(spec.source.image);
      resolved = {
        kind: 'image',
        ref: image.reference,
        sourceKey: `image:${image.digest}`,
        env: mergeEnv(image.config.Env ?? [], spec.env ?? []),
        workingDir: spec.workingDir || image.config.WorkingDir || '/',
        user: await resolveImageUser(image.diskPath, spec.user || image.config.User || 'root'),
        cpus,
        memoryMib,
        ...(spec.volumes?.length ? { volumes: spec.volumes } : {}),
        compat,
      };
    }
    if (!resolved.workingDir.startsWith('/')) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `working directory "${resolved.workingDir}" must be an absolute path`);
    }
    let inject: Resolved['inject'] = null;
    if (spec.inject) {
      if (!isAbsolute(spec.inject.hostPath)) {
        throw new CellError(ErrorCodes.INVALID_ARGUMENT, `the host path to copy in must be absolute: ${spec.inject.hostPath}`);
      }
      const hash = await treeHash(spec.inject.hostPath, host);
      const into = spec.inject.guestPath ?? '';
      // A file lands inside a directory target (`to` absent or ending in /), like `cp file dir/`.
      const isDirectory = (await host.stat(spec.inject.hostPath).catch(hostPathError(spec.inject.hostPath))).isDirectory();
      const target = !isDirectory && (into === '' || into.endsWith('/')) ? posix.join(into || '.', basename(spec.inject.hostPath)) : into || '.';
      inject = { hostPath: spec.inject.hostPath, guestPath: posix.resolve(resolved.workingDir, target), treeHash: hash, isDirectory };
    }
    return { ...resolved, inject };
  }

  /** Boots or forks the VM, copies files in, runs the command, snapshots a success, removes the VM. */
  private async execute(
    spec: ActionSpec,
    r: Resolved,
    cache: { key: string; replace: boolean } | null,
    opts: ActionRunOptions,
    started: number,
  ): Promise<ActionResult> {
    const key = cache?.key ?? null;
    const sink = opts.sink ?? NULL_SINK;
    const vmName = opts.vmName ?? `action-${randomBytes(3).toString('hex')}`;
    const vm = await this.startVm(r, vmName);
    let service: Promise<ExecResult> | undefined;
    try {
      const live = this.ctx.live.require(vm.id);
      if (r.inject) await inject(live.agent, r.inject, opts.host ?? CELLD_HOST_FS);
      const { uid, gid } = parseUser(r.user);
      const command = { env: r.env, cwd: r.workingDir, uid, gid, signal: opts.signal };
      let exitCode = 0;
      if (spec.cmd.length > 0) {
        const running = runGuestCommand(live.agent, { ...command, argv: spec.cmd, timeoutSec: spec.timeoutSec ?? 0 }, sink);
        if (spec.detach) {
          service = running;
          running.catch(() => {});
        } else {
          exitCode = (await running).exitCode;
        }
      }
      if (exitCode === 0 && spec.ready) {
        await awaitReady(live.agent, spec.ready, { ...command, serviceExit: service?.then((res) => res.exitCode) });
      }
      if (opts.signal?.aborted) throw new CellError(ErrorCodes.CANCELLED, 'the action was cancelled');
      let snapshot: SnapshotRecord | null = null;
      if (exitCode === 0 && (key !== null || opts.snapshot)) {
        snapshot = await this.snapshots.take(vm.id, {
          name: cache ? this.snapshotName(cache.key) : undefined,
          stop: true,
          ...(cache ? { cache: { key: cache.key, description: describeAction(spec, r), replace: cache.replace } } : {}),
        });
        await this.ctx.checkpoint('action:snapshotted');
      }
      return { exitCode, snapshot, cached: false, key, durationMs: performance.now() - started };
    } finally {
      await this.vms.remove(vm.id, true).catch(() => {});
      await service?.catch(() => {});
    }
  }

  private async startVm(r: Resolved, name: string): Promise<VmRecord> {
    if (r.kind === 'snapshot') {
      const [vm] = await this.snapshots.fork(r.ref, {
        count: 1,
        name: this.vms.availableName(name),
        overrides: { cmd: [], env: r.env, workingDir: r.workingDir, user: r.user },
        copyMemory: true,
        ephemeral: true,
      });
      return vm!;
    }
    const created = await this.vms.create({
      image: r.ref,
      name: this.vms.availableName(name),
      ephemeral: true,
      cpus: r.cpus,
      memoryMib: r.memoryMib,
      ...(r.volumes ? { volumes: r.volumes } : {}),
      env: r.env,
      workingDir: r.workingDir,
      user: r.user,
    });
    try {
      return await this.vms.start(created.id);
    } catch (err) {
      await this.vms.remove(created.id, true).catch(() => {});
      throw err;
    }
  }

  /** `cache-<key>` for the snapshot a cached result makes, unless a snapshot is called that already. */
  snapshotName(key: string): string | undefined {
    const name = `cache-${key.slice(0, 12)}`;
    return this.snapshots.nameExists(name) ? undefined : name;
  }

  /**
   * Stores `key` -> an existing snapshot; with `replace` the entry takes the old one's place (its
   * snapshot is then unheld). Actions record theirs with the snapshot instead (TakeSnapshotOptions.cache).
   */
  record(key: string, snapshotId: string, description: string, replace = false): void {
    const entry = cacheEntryFor({ key, description, replace }, snapshotId, new Date().toISOString());
    this.ctx.db.transaction(() => this.ctx.stores.actionCache.put(entry, replace))();
  }
}

/** What ran, for `cell cache ls`: the source and the command (or the copy). */
function describeAction(spec: ActionSpec, r: Resolved): string {
  const source = r.kind === 'image' ? r.ref : (r.snapshot?.name ?? shortId(r.ref));
  const what = spec.cmd.length > 0 ? spec.cmd.join(' ') : `copy ${r.inject?.hostPath} -> ${r.inject?.guestPath}`;
  return `${source}: ${what}`;
}

/**
 * Copies a host directory's contents into a guest directory (created 0755 if missing; an existing
 * one keeps its mode and owner: injecting into / must not chmod /), or a host file to a path.
 */
async function inject(agent: AgentClient, { hostPath, guestPath, isDirectory }: NonNullable<Resolved['inject']>, host: HostFs): Promise<void> {
  if (!isDirectory) {
    await copyIntoGuest(agent, hostPath, guestPath, {}, host);
    return;
  }
  const exists = await agent.stat(guestPath, { follow: true }).then(
    (s) => s.kind === 'directory',
    () => false,
  );
  if (!exists) await agent.mkdir(guestPath, { mode: 0o755, uid: 0, gid: 0 });
  for (const name of (await host.readdir(hostPath).catch(hostPathError(hostPath))).sort()) await copyIntoGuest(agent, join(hostPath, name), posix.join(guestPath, name), {}, host);
}
