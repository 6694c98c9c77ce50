import { Type, type Static } from '@sinclair/typebox';
import { created, empty, json, ndjson, route } from './contract.js';
import { event, RefParams, Removed, RemoveQuery } from './common.js';
import { Vm, VmSpec } from './vms.js';
import { MAX_POOL_SIZE } from '../domain/pool.js';

/** Snapshots: take, fork, restore, export, import, prune. */

export const SnapshotRequest = Type.Object(
  { name: Type.Optional(Type.String()), stop: Type.Optional(Type.Boolean()), labels: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 64 })) },
  { additionalProperties: false },
);
export type SnapshotRequest = Static<typeof SnapshotRequest>;

export const ForkRequest = Type.Object(
  { count: Type.Optional(Type.Integer({ minimum: 1 })), name: Type.Optional(Type.String()), labels: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 64 })) },
  { additionalProperties: false },
);
export type ForkRequest = Static<typeof ForkRequest>;

export const RestoreRequest = Type.Object({ snapshot: Type.String({ minLength: 1 }) }, { additionalProperties: false });
export type RestoreRequest = Static<typeof RestoreRequest>;

export const CompatKey = Type.Object({
  qemuVersion: Type.String(),
  machine: Type.String(),
  cpuModel: Type.String(),
  accelerator: Type.String(),
  kernelDigest: Type.String(),
  initramfsDigest: Type.String(),
});

export const Snapshot = Type.Object({
  id: Type.String(),
  name: Type.String(),
  parentVm: Type.Union([Type.String(), Type.Null()]),
  parentVmName: Type.Union([Type.String(), Type.Null()]),
  parentSnapshot: Type.Union([Type.String(), Type.Null()]),
  spec: VmSpec,
  compat: CompatKey,
  stateBytes: Type.Integer(),
  memoryBytes: Type.Integer(),
  diskBytes: Type.Integer(),
  createdAt: Type.String(),
  /** Its pool, when it has one (docs/pools.md). */
  pool: Type.Optional(
    Type.Object({
      size: Type.Integer(),
      warm: Type.Boolean(),
      ready: Type.Integer(),
      starting: Type.Integer(),
      memoryBytes: Type.Integer(),
      held: Type.Optional(Type.String()),
    }),
  ),
});
export type Snapshot = Static<typeof Snapshot>;

export const PoolRequest = Type.Object(
  { size: Type.Integer({ minimum: 0, maximum: MAX_POOL_SIZE }), warm: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type PoolRequest = Static<typeof PoolRequest>;

export const ExportRequest = Type.Object({ file: Type.String({ minLength: 1 }) }, { additionalProperties: false });
export type ExportRequest = Static<typeof ExportRequest>;

export const ImportRequest = Type.Object(
  { file: Type.String({ minLength: 1 }), name: Type.Optional(Type.String()) },
  { additionalProperties: false },
);
export type ImportRequest = Static<typeof ImportRequest>;

/** A registry reference (`host:5000/ns/name:tag`); `insecureRegistries` as `cell pull --insecure-registry`. */
export const PushRequest = Type.Object(
  { reference: Type.String({ minLength: 1, maxLength: 1024 }), insecureRegistries: Type.Optional(Type.Array(Type.String({ maxLength: 256 }), { maxItems: 16 })) },
  { additionalProperties: false },
);
export type PushRequest = Static<typeof PushRequest>;

const BlobCount = Type.Object({ blobs: Type.Integer(), bytes: Type.Integer() });
export const PushReply = Type.Object({ reference: Type.String(), digest: Type.String(), uploaded: BlobCount, existing: BlobCount, manifestBytes: Type.Integer() });
export type PushReply = Static<typeof PushReply>;

/** Bytes of the snapshot's blobs dealt with so far (sent, found at the registry, or fetched), of all. */
export const TransferEvent = event('progress', { done: Type.Integer(), total: Type.Integer() });
export const PushStreamEvent = Type.Union([TransferEvent, event('pushed', { result: PushReply }), event('done', {})]);
export type PushStreamEvent = Static<typeof PushStreamEvent>;

export const PullRequest = Type.Object(
  {
    reference: Type.String({ minLength: 1, maxLength: 1024 }),
    name: Type.Optional(Type.String()),
    insecureRegistries: Type.Optional(Type.Array(Type.String({ maxLength: 256 }), { maxItems: 16 })),
  },
  { additionalProperties: false },
);
export type PullRequest = Static<typeof PullRequest>;
/** Before the blobs move: how many come from the registry, and how many RAM chunks from snapshots here (its ancestors'). */
export const PullTransferEvent = event('transferred', { fetched: BlobCount, reused: BlobCount });
export const PullStreamEvent = Type.Union([TransferEvent, PullTransferEvent, event('snapshot', { snapshot: Snapshot }), event('done', {})]);
export type PullStreamEvent = Static<typeof PullStreamEvent>;

export const PruneRequest = Type.Object(
  { maxCount: Type.Optional(Type.Integer({ minimum: 0 })), maxBytes: Type.Optional(Type.Integer({ minimum: 0 })) },
  { additionalProperties: false },
);
export type PruneRequest = Static<typeof PruneRequest>;

export const snapshots = {
  list: route({ method: 'GET', path: '/v1/snapshots', summary: 'every snapshot', reply: json(Type.Array(Snapshot)) }),
  get: route({ method: 'GET', path: '/v1/snapshots/:ref', summary: 'one snapshot', params: RefParams, reply: json(Snapshot) }),
  take: route({
    method: 'POST',
    path: '/v1/vms/:ref/snapshot',
    summary: "capture a VM's memory, devices and disk (it keeps running unless stop)",
    params: RefParams,
    body: SnapshotRequest,
    reply: created(Snapshot),
  }),
  fork: route({
    method: 'POST',
    path: '/v1/snapshots/:ref/fork',
    summary: 'start count running forks of a snapshot, each with its own identity',
    params: RefParams,
    body: ForkRequest,
    reply: created(Type.Array(Vm)),
  }),
  pool: route({
    method: 'POST',
    path: '/v1/snapshots/:ref/pool',
    summary: 'keep N spares of the snapshot ready for its forks, exact or warm (size 0: none)',
    params: RefParams,
    body: PoolRequest,
    reply: json(Snapshot),
  }),
  restore: route({ method: 'POST', path: '/v1/vms/:ref/restore', summary: 'roll a VM back to a snapshot', params: RefParams, body: RestoreRequest, reply: json(Vm) }),
  export: route({
    method: 'POST',
    path: '/v1/snapshots/:ref/export',
    summary: "write a snapshot to an archive on celld's host",
    params: RefParams,
    body: ExportRequest,
    reply: json(Type.Object({ bytes: Type.Integer() })),
  }),
  import: route({ method: 'POST', path: '/v1/snapshots/import', summary: "read a snapshot archive on celld's host", body: ImportRequest, reply: created(Snapshot) }),
  push: route({
    method: 'POST',
    path: '/v1/snapshots/:ref/push',
    summary: 'send a snapshot to a registry as an OCI artifact (only the blobs it lacks)',
    params: RefParams,
    body: PushRequest,
    reply: ndjson(PushStreamEvent),
  }),
  pull: route({ method: 'POST', path: '/v1/snapshots/pull', summary: 'fetch a snapshot pushed to a registry, progress streamed', body: PullRequest, reply: ndjson(PullStreamEvent) }),
  prune: route({
    method: 'POST',
    path: '/v1/snapshots/prune',
    summary: 'remove least recently created snapshots nothing needs, down to the limits',
    body: PruneRequest,
    reply: json(Removed(Snapshot)),
  }),
  remove: route({
    method: 'DELETE',
    path: '/v1/snapshots/:ref',
    summary: 'remove a snapshot (one something needs with ?force=true)',
    params: RefParams,
    query: RemoveQuery,
    reply: empty(),
  }),
};
