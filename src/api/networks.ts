import { Type, type Static } from '@sinclair/typebox';
import { created, empty, json, route } from './contract.js';
import { Vm } from './vms.js';

/** Networks: the built-in default network and named ones (docs/networking.md). */

export const NetworkView = Type.Object({
  name: Type.String(),
  subnet: Type.String(),
  gateway: Type.String(),
  /** No way out of the host: its VMs reach each other and nothing else. */
  internal: Type.Boolean(),
  builtin: Type.Boolean(),
  createdAt: Type.Union([Type.String(), Type.Null()]),
  vms: Type.Array(Type.Object({ name: Type.String(), address: Type.String() })),
});
export type NetworkView = Static<typeof NetworkView>;

export const CreateNetworkRequest = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 32 }),
    /** An IPv4 CIDR from /8 to /28; default: the first free 10.90+.x.0/24. */
    subnet: Type.Optional(Type.String()),
    internal: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type CreateNetworkRequest = Static<typeof CreateNetworkRequest>;

const NameParams = Type.Object({ name: Type.String({ minLength: 1 }) });
const VmBody = Type.Object({ vm: Type.String({ minLength: 1 }) }, { additionalProperties: false });

export const networks = {
  list: route({ method: 'GET', path: '/v1/networks', summary: 'networks with the VMs on each', reply: json(Type.Array(NetworkView)) }),
  get: route({ method: 'GET', path: '/v1/networks/:name', summary: 'one network', params: NameParams, reply: json(NetworkView) }),
  create: route({ method: 'POST', path: '/v1/networks', summary: 'make a named network', body: CreateNetworkRequest, reply: created(NetworkView) }),
  remove: route({ method: 'DELETE', path: '/v1/networks/:name', summary: 'remove a network no VM is on', params: NameParams, reply: empty() }),
  prune: route({ method: 'POST', path: '/v1/networks/prune', summary: 'remove every named network no VM is on', reply: json(Type.Object({ removed: Type.Array(Type.String()) })) }),
  connect: route({ method: 'POST', path: '/v1/networks/:name/connect', summary: 'put a VM on the network (a running one at once)', params: NameParams, body: VmBody, reply: json(Vm) }),
  disconnect: route({ method: 'POST', path: '/v1/networks/:name/disconnect', summary: 'take a VM off the network', params: NameParams, body: VmBody, reply: json(Vm) }),
};
