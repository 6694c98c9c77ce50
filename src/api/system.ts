import { Type, type Static } from '@sinclair/typebox';
import { json, ndjson, route } from './contract.js';
import { event, ProgressEvent } from './common.js';

/** celld itself: liveness, facts about the host, host set-up, this API's own description. */

export const Info = Type.Object({
  version: Type.String(),
  home: Type.String(),
  cacheDir: Type.String(),
  accelerator: Type.String(),
  acceleratorReason: Type.String(),
  qemuVersion: Type.String(),
  guestKernel: Type.String(),
  vms: Type.Record(Type.String(), Type.Integer()),
  images: Type.Integer(),
  spares: Type.Integer(),
  /** Snapshots' pools together (docs/pools.md). */
  pools: Type.Object({ pools: Type.Integer(), ready: Type.Integer(), memoryBytes: Type.Integer(), memoryMaxBytes: Type.Integer() }),
  imageCacheMaxBytes: Type.Union([Type.Integer(), Type.Null()]),
  /** Whether new VMs get a network here, and how (or why not). */
  network: Type.Object({ available: Type.Boolean(), reason: Type.String() }),
  daemonPid: Type.Integer(),
  /** celld's TCP listener (docs/remote.md), or null when it serves its unix socket only. */
  remote: Type.Union([Type.Object({ url: Type.String(), fingerprint: Type.Union([Type.String(), Type.Null()]) }), Type.Null()]),
});
export type Info = Static<typeof Info>;

export const SetupQuery = Type.Object({ reprobe: Type.Optional(Type.Boolean()) });

export const SetupEvent = Type.Union([ProgressEvent, event('done', {})]);
export type SetupEvent = Static<typeof SetupEvent>;

const UsageRow = Type.Object({ count: Type.Integer(), logicalBytes: Type.Integer(), usedBytes: Type.Integer() });
/** `cell system df`: logical bytes (file sizes) and really used ones (allocated blocks), by kind. */
export const DiskUsage = Type.Object({
  images: UsageRow,
  snapshots: Type.Intersect([UsageRow, Type.Object({ retired: Type.Integer() })]),
  vms: UsageRow,
  volumes: UsageRow,
  buildCache: UsageRow,
  total: Type.Object({ logicalBytes: Type.Integer(), usedBytes: Type.Integer() }),
  /** `shared`: snapshots' RAM files are clones of their parents' (reflinks); `whole`: each keeps its own, and why. */
  snapshotRam: Type.Object({ mode: Type.Union([Type.Literal('shared'), Type.Literal('whole')]), reason: Type.String() }),
});
export type DiskUsage = Static<typeof DiskUsage>;

export const system = {
  ping: route({ method: 'GET', path: '/v1/ping', summary: 'is celld there', reply: json(Type.Object({ ok: Type.Boolean(), pid: Type.Integer() })) }),
  info: route({ method: 'GET', path: '/v1/info', summary: 'accelerator and why, QEMU version, guest kernel, CELL_HOME, VM counts', reply: json(Info) }),
  df: route({ method: 'GET', path: '/v1/system/df', summary: "what celld's home holds by kind: logical and really used bytes", reply: json(DiskUsage) }),
  setup: route({
    method: 'POST',
    path: '/v1/setup',
    summary: 'prepare the host (packages, kernel, initramfs, built-in image, accelerator); idempotent',
    query: SetupQuery,
    reply: ndjson(SetupEvent),
  }),
  openapi: route({
    method: 'GET',
    path: '/v1/openapi.json',
    summary: 'this API as an OpenAPI 3.1 document, generated from the route table',
    reply: json(Type.Object({ openapi: Type.String() }, { additionalProperties: true })),
  }),
};
