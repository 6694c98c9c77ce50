import type { ActionRequest, ActionResult, BuildProgressEvent, BuildRequest, BuildSummary, CacheEntry } from '../api/builds.js';
import { Api } from '../api/routes.js';
import { resultStream } from './commands.js';
import { toSeconds, toWholeSeconds, type OutputHandlers, type RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { actions, builds, cache } = Api;

/** An action: the wire's ActionRequest with its durations in milliseconds. */
export type ActionSpec = Omit<ActionRequest, 'timeoutSec' | 'ready'> & {
  /** celld kills the command after this long (exit code 124). */
  commandTimeoutMs?: number;
  /** A command retried until it exits 0 (with `detach`): a server's port, say. */
  ready?: { cmd: string[]; timeoutMs?: number; intervalMs?: number };
};

export interface ActionRunOptions extends RequestOptions, OutputHandlers {
  /** The cache verdict, before anything runs (key null without caching). */
  onPlan?(plan: { key: string | null; cached: boolean }): void;
}
export interface BuildRunOptions extends RequestOptions, OutputHandlers {
  onEvent?(event: BuildProgressEvent): void;
}
export interface CachePruneOptions extends RequestOptions {
  maxCount?: number;
  maxBytes?: number;
  /** Entries last used longer ago than this go (whole seconds on the wire). */
  maxAgeMs?: number;
}
export type RemovedCacheEntry = Omit<CacheEntry, 'snapshotName' | 'bytes'>;

function actionRequest({ commandTimeoutMs, ready, ...spec }: ActionSpec): ActionRequest {
  const req: ActionRequest = { ...spec };
  if (commandTimeoutMs !== undefined) req.timeoutSec = toSeconds(commandTimeoutMs);
  if (ready) req.ready = { cmd: ready.cmd, timeoutSec: toWholeSeconds(ready.timeoutMs), intervalMs: ready.intervalMs };
  return req;
}

/**
 * Actions: one command in a fresh VM from an image or a snapshot, its output streamed to the
 * handlers. With `cache: true` the snapshot it leaves is stored under a key made of everything
 * that could change the result; the same action again returns that snapshot and runs nothing.
 */
export class ActionsClient {
  constructor(private readonly transport: Transport) {}

  run(spec: ActionSpec, opts: ActionRunOptions = {}): Promise<ActionResult> {
    return resultStream(
      this.transport.stream(actions.run, { body: actionRequest(spec) }, opts),
      opts,
      'action',
      (event) => (event.type === 'result' ? event.result : undefined),
      (event) => {
        if (event.type === 'action') opts.onPlan?.({ key: event.key, cached: event.cached });
      },
    );
  }
}

/** `cell build`: runs a build file (a path on celld's host) step by step, cached per step. */
export class BuildsClient {
  constructor(private readonly transport: Transport) {}

  build(req: BuildRequest, opts: BuildRunOptions = {}): Promise<BuildSummary> {
    return resultStream(
      this.transport.stream(builds.build, { body: req }, opts),
      opts,
      'build',
      (event) => (event.type === 'built' ? event.result : undefined),
      (event) => {
        if (event.type !== 'built') opts.onEvent?.(event);
      },
    );
  }
}

/** The action cache. */
export class CacheClient {
  constructor(private readonly transport: Transport) {}

  /** Least recently used first. */
  list(opts: RequestOptions = {}): Promise<CacheEntry[]> {
    return this.transport.call(cache.list, {}, opts);
  }

  prune(opts: CachePruneOptions): Promise<{ removed: RemovedCacheEntry[] }> {
    const body = { maxCount: opts.maxCount, maxBytes: opts.maxBytes, maxAgeSec: toWholeSeconds(opts.maxAgeMs) };
    return this.transport.call(cache.prune, { body }, opts);
  }
}
