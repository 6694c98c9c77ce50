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
});
export type Info = Static<typeof Info>;

export const SetupQuery = Type.Object({ reprobe: Type.Optional(Type.Boolean()) });

export const SetupEvent = Type.Union([ProgressEvent, event('done', {})]);
export type SetupEvent = Static<typeof SetupEvent>;

export const system = {
  ping: route({ method: 'GET', path: '/v1/ping', summary: 'is celld there', reply: json(Type.Object({ ok: Type.Boolean(), pid: Type.Integer() })) }),
  info: route({ method: 'GET', path: '/v1/info', summary: 'accelerator and why, QEMU version, guest kernel, CELL_HOME, VM counts', reply: json(Info) }),
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
