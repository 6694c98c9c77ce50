import { Type, type Static } from '@sinclair/typebox';
import { created, empty, json, route } from './contract.js';

/** Named volumes (docs/volumes.md). */

export const VolumeView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  sizeBytes: Type.Integer(),
  /** What its sparse image takes on the host now. */
  usedBytes: Type.Integer(),
  createdAt: Type.String(),
  labels: Type.Optional(Type.Record(Type.String(), Type.String())),
  /** Every VM whose spec mounts it; `running`: its machine holds the disk now. */
  users: Type.Array(Type.Object({ vm: Type.String(), name: Type.String(), path: Type.String(), readOnly: Type.Boolean(), running: Type.Boolean() })),
});
export type VolumeView = Static<typeof VolumeView>;

export const CreateVolumeRequest = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63 }),
    /** 16 MiB to 16 TiB; default 10 GiB (sparse: it takes what is written). */
    sizeBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    /** `k=v` labels. */
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 64 })),
  },
  { additionalProperties: false },
);

const NameParams = Type.Object({ name: Type.String({ minLength: 1 }) });

export const volumes = {
  list: route({ method: 'GET', path: '/v1/volumes', summary: 'named volumes with the VMs that mount each', reply: json(Type.Array(VolumeView)) }),
  get: route({ method: 'GET', path: '/v1/volumes/:name', summary: 'one volume', params: NameParams, reply: json(VolumeView) }),
  create: route({ method: 'POST', path: '/v1/volumes', summary: 'make an empty named volume', body: CreateVolumeRequest, reply: created(VolumeView) }),
  remove: route({
    method: 'DELETE',
    path: '/v1/volumes/:name',
    summary: 'remove a volume: refused while a VM runs with it; refused while a stopped VM mounts it unless force',
    params: NameParams,
    query: Type.Object({ force: Type.Optional(Type.Boolean()) }),
    reply: empty(),
  }),
  export: route({
    method: 'POST',
    path: '/v1/volumes/:name/export',
    summary: "write a volume to an archive on celld's host (refused while a VM writes it)",
    params: NameParams,
    body: Type.Object({ file: Type.String({ minLength: 1 }) }, { additionalProperties: false }),
    reply: json(Type.Object({ bytes: Type.Integer() })),
  }),
  import: route({
    method: 'POST',
    path: '/v1/volumes/import',
    summary: "read a volume archive on celld's host",
    body: Type.Object({ file: Type.String({ minLength: 1 }), name: Type.Optional(Type.String()) }, { additionalProperties: false }),
    reply: created(VolumeView),
  }),
  prune: route({ method: 'POST', path: '/v1/volumes/prune', summary: 'remove every volume no VM mounts', reply: json(Type.Object({ removed: Type.Array(Type.String()) })) }),
};
