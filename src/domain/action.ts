import { createHash } from 'node:crypto';
import type { SnapshotRecord } from './snapshot.js';

/**
 * An action runs one command once in a fresh VM booted from an image or forked from a snapshot,
 * optionally after copying a host directory in, and can leave a snapshot of the VM as the command
 * left it. Cached actions store that snapshot under a key made from everything that could change
 * the result, so running the same action again returns the snapshot and runs nothing.
 */
export type ActionSource = { image: string } | { snapshot: string };

export interface ActionInject {
  /** A host file or directory, copied into the guest before the command runs (skipped on a hit). */
  hostPath: string;
  /** Where it lands in the guest; default: the action's working directory. */
  guestPath?: string;
}

export interface ActionSpec {
  source: ActionSource;
  /** argv; empty = no command (the action only injects files and snapshots the result). */
  cmd: string[];
  /** Added to the source's environment (later entries win). */
  env?: string[];
  /** Default: the source's working directory. */
  workingDir?: string;
  user?: string;
  /** Seconds; 0 or undefined = no limit. */
  timeoutSec?: number;
  inject?: ActionInject;
  /** Start the command and leave it running (a server): the ready check says when to go on. */
  detach?: boolean;
  ready?: ReadyCheck;
  /** Image sources only: a snapshot keeps the resources it was taken with. */
  cpus?: number;
  memoryMib?: number;
  /**
   * Image sources only: named volumes (`NAME:/path[:ro]`) the VM mounts, and every VM forked from
   * its snapshot after it (docs/volumes.md). Their contents are not part of the key. No host
   * folders: the build file's parser refuses them (build-file.ts readVolumes).
   */
  volumes?: string[];
}

/** A command retried until it exits 0, e.g. a probe of the port a server listens on. */
export interface ReadyCheck {
  cmd: string[];
  /** Give up after this many seconds (default 30). */
  timeoutSec?: number;
  /** Pause between attempts (default 200 ms). */
  intervalMs?: number;
}

export const DEFAULT_READY_TIMEOUT_SEC = 30;
export const DEFAULT_READY_INTERVAL_MS = 200;

/**
 * `none` never looks up or stores; `cache` does both, under the computed key (plus `salt`, if
 * any); with `refresh` it skips the look-up and its result replaces the entry (`build --no-cache`).
 */
export type CachePolicy = { mode: 'none' } | { mode: 'cache'; salt?: string; refresh?: boolean };

export interface ActionResult {
  exitCode: number;
  /** The snapshot taken after the command (cached actions, or when one was asked for). */
  snapshot: SnapshotRecord | null;
  /** True when nothing ran: the result came from the cache. */
  cached: boolean;
  /** The cache key (null with policy `none`). */
  key: string | null;
  durationMs: number;
}

/** Everything that can change what an action leaves behind, in resolved form. */
export interface ActionKeyInputs {
  /** `image:<manifest digest>` or `snapshot:<id>`. */
  source: string;
  cmd: readonly string[];
  /** The effective environment (source's merged with the action's). */
  env: readonly string[];
  workingDir: string;
  user: string;
  timeoutSec: number;
  cpus: number;
  memoryMib: number;
  /** The volume mounts (`NAME:/path[:ro]`) an image source's VM has, not their contents; none: absent. */
  volumes?: readonly string[];
  detach: boolean;
  ready: readonly string[] | null;
  /** Content hash of the injected tree (see tree-hash.ts) and where it goes, or null. */
  inject: { treeHash: string; guestPath: string } | null;
  /** compatKeyHash of the host: a snapshot is only reusable where it can be restored. */
  compat: string;
  salt?: string;
}

/** Bumped whenever what an action does changes in a way old cache entries would not reflect. */
export const ACTION_KEY_VERSION = 1;

/**
 * The cache key: sha256 over a canonical JSON of the inputs. Environment entries are sorted by
 * name (their order carries no meaning once merged); everything else keeps its order.
 */
export function actionCacheKey(inputs: ActionKeyInputs): string {
  const env = [...inputs.env].sort((a, b) => envName(a).localeCompare(envName(b)));
  const canonical = JSON.stringify([
    ACTION_KEY_VERSION,
    inputs.source,
    inputs.cmd,
    env,
    inputs.workingDir,
    inputs.user,
    inputs.timeoutSec,
    inputs.cpus,
    inputs.memoryMib,
    inputs.detach,
    inputs.ready,
    inputs.inject ? [inputs.inject.treeHash, inputs.inject.guestPath] : null,
    inputs.compat,
    inputs.salt ?? null,
    // Only when there are any: keys of actions without volumes stay what they were.
    ...(inputs.volumes?.length ? [['volumes', ...inputs.volumes]] : []),
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

function envName(entry: string): string {
  const eq = entry.indexOf('=');
  return eq < 0 ? entry : entry.slice(0, eq);
}

/** One action-cache entry: a key and the snapshot it stands for. */
export interface CacheEntry {
  key: string;
  snapshotId: string;
  /** What ran, for `cell cache ls` (source and command, shortened). */
  description: string;
  createdAt: string;
  lastUsed: string;
  hits: number;
}

/**
 * A cache entry to be recorded with the snapshot it holds, in the snapshot's own transaction: a
 * crash in between would leave a snapshot no entry holds (nor anything else). `replace` drops an
 * entry of the same key first (a `--no-cache` rebuild).
 */
export interface PendingCacheEntry {
  key: string;
  description: string;
  replace: boolean;
}

export function cacheEntryFor(pending: PendingCacheEntry, snapshotId: string, at: string): CacheEntry {
  return { key: pending.key, snapshotId, description: pending.description.slice(0, 200), createdAt: at, lastUsed: at, hits: 0 };
}
