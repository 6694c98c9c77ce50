import type { CreateNetworkRequest, NetworkView } from '../api/networks.js';
import { Api } from '../api/routes.js';
import type { Vm } from '../api/vms.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { networks } = Api;

/** Networks: the default one and named ones; VMs on one reach each other by name. */
export class NetworksClient {
  constructor(private readonly transport: Transport) {}

  list(opts: RequestOptions = {}): Promise<NetworkView[]> {
    return this.transport.call(networks.list, {}, opts);
  }

  get(name: string, opts: RequestOptions = {}): Promise<NetworkView> {
    return this.transport.call(networks.get, { params: { name } }, opts);
  }

  create(req: CreateNetworkRequest, opts: RequestOptions = {}): Promise<NetworkView> {
    return this.transport.call(networks.create, { body: req }, opts);
  }

  remove(name: string, opts: RequestOptions = {}): Promise<void> {
    return this.transport.call(networks.remove, { params: { name } }, opts);
  }

  /** Removes every named network no VM is on; resolves with their names. */
  async prune(opts: RequestOptions = {}): Promise<string[]> {
    return (await this.transport.call(networks.prune, {}, opts)).removed;
  }

  /** Puts a VM on the network: a running one at once (its NIC stays; its host side changes). */
  connect(name: string, vm: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(networks.connect, { params: { name }, body: { vm } }, opts);
  }

  disconnect(name: string, vm: string, opts: RequestOptions = {}): Promise<Vm> {
    return this.transport.call(networks.disconnect, { params: { name }, body: { vm } }, opts);
  }
}
