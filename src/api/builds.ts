import { Type, type Static } from '@sinclair/typebox';
import { json, ndjson, route } from './contract.js';
import { event, OutputEvents, Removed } from './common.js';
import { Snapshot } from './snapshots.js';

/** Cached actions, builds (a chain of actions from a build file) and the action cache. */

export const ReadyCheck = Type.Object(
  {
    cmd: Type.Array(Type.String(), { minItems: 1 }),
    /** Give up after this many seconds (default 30). */
    timeoutSec: Type.Optional(Type.Integer({ minimum: 1 })),
    intervalMs: Type.Optional(Type.Integer({ minimum: 10 })),
  },
  { additionalProperties: false },
);

/** One command in a fresh VM, optionally cached (domain/action.ts). */
export const ActionRequest = Type.Object(
  {
    /** Exactly one of image and fromSnapshot. */
    image: Type.Optional(Type.String({ minLength: 1 })),
    fromSnapshot: Type.Optional(Type.String({ minLength: 1 })),
    cmd: Type.Array(Type.String()),
    env: Type.Optional(Type.Array(Type.String())),
    workingDir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    timeoutSec: Type.Optional(Type.Number({ minimum: 0 })),
    cpus: Type.Optional(Type.Integer()),
    memoryMib: Type.Optional(Type.Integer()),
    /** A host path (absolute; celld runs on the same host) copied into the guest first. */
    inject: Type.Optional(
      Type.Object({ hostPath: Type.String({ minLength: 1 }), guestPath: Type.Optional(Type.String()) }, { additionalProperties: false }),
    ),
    detach: Type.Optional(Type.Boolean()),
    ready: Type.Optional(ReadyCheck),
    /** Look up and store the result under the action's key (`salt` is mixed into the key). */
    cache: Type.Optional(Type.Boolean()),
    salt: Type.Optional(Type.String()),
    /** Take a snapshot after a successful command even without caching. */
    keepSnapshot: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type ActionRequest = Static<typeof ActionRequest>;

export const ActionResult = Type.Object({
  exitCode: Type.Integer(),
  snapshot: Type.Union([Snapshot, Type.Null()]),
  cached: Type.Boolean(),
  key: Type.Union([Type.String(), Type.Null()]),
  durationMs: Type.Number(),
});
export type ActionResult = Static<typeof ActionResult>;

export const ActionEvent = Type.Union([
  /** First: the cache verdict (key null without caching). */
  event('action', { key: Type.Union([Type.String(), Type.Null()]), cached: Type.Boolean() }),
  ...OutputEvents,
  event('result', { result: ActionResult }),
]);
export type ActionEvent = Static<typeof ActionEvent>;

/** A build file on celld's host (absolute path). */
export const BuildRequest = Type.Object(
  {
    file: Type.String({ minLength: 1 }),
    tag: Type.Optional(Type.String({ minLength: 1 })),
    noCache: Type.Optional(Type.Boolean()),
    target: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type BuildRequest = Static<typeof BuildRequest>;

export const BuildSummary = Type.Object({
  /** The final snapshot (null when a step failed). */
  snapshot: Type.Union([Snapshot, Type.Null()]),
  /** 0, or the failing step's exit code. */
  exitCode: Type.Integer(),
  ran: Type.Integer(),
  cached: Type.Integer(),
  durationMs: Type.Number(),
  key: Type.Union([Type.String(), Type.Null()]),
});
export type BuildSummary = Static<typeof BuildSummary>;

export const BuildStepKind = Type.Union([Type.Literal('run'), Type.Literal('copy'), Type.Literal('env'), Type.Literal('workdir')]);
export type BuildStepKind = Static<typeof BuildStepKind>;

/** A build's progress, besides the output of its steps' commands. */
export const BuildProgressEvent = Type.Union([
  event('base', { description: Type.String() }),
  event('step', {
    index: Type.Integer(),
    number: Type.Integer(),
    total: Type.Integer(),
    kind: BuildStepKind,
    description: Type.String(),
    line: Type.Optional(Type.Integer()),
  }),
  event('step-done', {
    index: Type.Integer(),
    number: Type.Integer(),
    total: Type.Integer(),
    /** ran: a VM ran it; cached: its snapshot came from the cache; metadata: nothing to run. */
    outcome: Type.Union([Type.Literal('ran'), Type.Literal('cached'), Type.Literal('metadata')]),
    snapshot: Type.Union([Type.String(), Type.Null()]),
    durationMs: Type.Number(),
  }),
  event('step-failed', { index: Type.Integer(), number: Type.Integer(), exitCode: Type.Integer(), message: Type.String() }),
]);
export type BuildProgressEvent = Static<typeof BuildProgressEvent>;

export const BuildEvent = Type.Union([...BuildProgressEvent.anyOf, ...OutputEvents, event('built', { result: BuildSummary })]);
export type BuildEvent = Static<typeof BuildEvent>;

export const CacheEntry = Type.Object({
  key: Type.String(),
  snapshotId: Type.String(),
  snapshotName: Type.Union([Type.String(), Type.Null()]),
  bytes: Type.Integer(),
  /** What ran (source and command, shortened). */
  description: Type.String(),
  createdAt: Type.String(),
  lastUsed: Type.String(),
  hits: Type.Integer(),
});
export type CacheEntry = Static<typeof CacheEntry>;

/** A removed entry: as listed, without its (now gone) snapshot's name and size. */
export const RemovedCacheEntry = Type.Omit(CacheEntry, ['snapshotName', 'bytes']);

export const CachePruneRequest = Type.Object(
  {
    maxCount: Type.Optional(Type.Integer({ minimum: 0 })),
    maxBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    /** Entries last used longer ago than this go. */
    maxAgeSec: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type CachePruneRequest = Static<typeof CachePruneRequest>;

export const actions = {
  run: route({
    method: 'POST',
    path: '/v1/actions',
    summary: 'one command in a fresh VM, optionally cached: the cache verdict, its output, its result',
    body: ActionRequest,
    reply: ndjson(ActionEvent),
  }),
};

export const builds = {
  build: route({
    method: 'POST',
    path: '/v1/builds',
    summary: 'run a build file step by step, each step cached as a snapshot',
    body: BuildRequest,
    reply: ndjson(BuildEvent),
  }),
};

export const cache = {
  list: route({ method: 'GET', path: '/v1/cache', summary: 'action cache entries, least recently used first', reply: json(Type.Array(CacheEntry)) }),
  prune: route({
    method: 'POST',
    path: '/v1/cache/prune',
    summary: 'remove least recently used entries (and their snapshots) down to the limits',
    body: CachePruneRequest,
    reply: json(Removed(RemovedCacheEntry)),
  }),
};
