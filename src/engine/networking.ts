import { createHash } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { DEFAULT_NETWORK, DEFAULT_SUBNET, GUEST_MAC, parseSubnet, type PublishedPort, type Subnet } from '../domain/network.js';
import type { VmRecord } from '../domain/vm.js';
import { DnsRelay } from '../network/dns-relay.js';
import { publishPort, type PortProxy } from '../network/port-proxy.js';
import { BRIDGE, ensureUplink } from '../network/uplink.js';
import { addressNamespace, createNamespace, listNamespaces, namespaceFor, ownNamespace, removeNamespace, type VmNamespace } from '../network/vm-namespace.js';
import type { LeaseStore } from '../store/lease-store.js';
import type { MachineSpec } from '../vmm/backend.js';

/**
 * VMs' networking (docs/networking.md): a namespace per machine, made before its QEMU starts; an
 * address on the default network, leased from the VM's creation to its removal; published ports
 * while it runs. The host side (bridge, NAT, filter, DNS relay) is made the first time a VM needs it.
 */
export interface Networking {
  /** Whether networked VMs can run here; the reason when not (shown by `cell info`). */
  readonly status: { available: boolean; reason: string };
  /** The namespace for machine `id` (a VM, or a spare that will be one); reused if it exists. */
  prepare(id: string): Promise<NonNullable<MachineSpec['network']>>;
  /** Once its machine runs: the VM's address and its published ports. */
  attach(vm: VmRecord): Promise<PublishedPort[]>;
  /** Its machine ended for good (stopped, crashed, removed): ports closed, namespace removed. */
  detach(id: string): Promise<void>;
  /** The VM is removed: its address goes back to the network. */
  forget(id: string): void;
  address(id: string): string | null;
  ports(id: string): PublishedPort[];
  /** At start-up: namespaces of this home whose machine is not running are removed. */
  sweep(keep: ReadonlySet<string>): Promise<void>;
  close(): Promise<void>;
}

/** No networking (the fake backend, hosts without it): a networked VM is refused with the reason. */
export class NoNetworking implements Networking {
  constructor(readonly reason = 'networking is off') {}
  get status() {
    return { available: false, reason: this.reason };
  }
  async prepare(): Promise<never> {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `this VM needs a network, but ${this.reason}: run it with --network none`);
  }
  async attach(): Promise<PublishedPort[]> {
    return [];
  }
  async detach(): Promise<void> {}
  forget(): void {}
  address(): null {
    return null;
  }
  ports(): PublishedPort[] {
    return [];
  }
  async sweep(): Promise<void> {}
  async close(): Promise<void> {}
}

/** Kernel networking: namespaces, a bridge, nftables, a DNS relay and port proxies in celld. */
export class HostNetworking implements Networking {
  private readonly subnet: Subnet;
  private readonly homeTag: string;
  private uplink: Promise<void> | null = null;
  private dns: DnsRelay | null = null;
  private readonly proxies = new Map<string, PortProxy[]>();

  constructor(
    home: string,
    private readonly leases: LeaseStore,
    opts: { subnet?: string } = {},
  ) {
    this.subnet = parseSubnet(opts.subnet ?? DEFAULT_SUBNET);
    // Namespaces are host-wide: this home's carry its tag, so a sweep takes only its own.
    this.homeTag = createHash('sha256').update(home).digest('hex').slice(0, 6);
  }

  readonly status = { available: true, reason: 'namespaces, a bridge and nftables (root)' };

  private ns(id: string): VmNamespace {
    return namespaceFor(this.homeTag, id);
  }

  /** The bridge, NAT and filter, and the DNS relay: once per daemon (the kernel keeps them). */
  private ensureUplink(): Promise<void> {
    this.uplink ??= (async () => {
      await ensureUplink(this.subnet);
      this.dns = await DnsRelay.start({ listen: this.subnet.gateway });
    })().catch((err: unknown) => {
      this.uplink = null;
      throw err;
    });
    return this.uplink;
  }

  async prepare(id: string): Promise<NonNullable<MachineSpec['network']>> {
    await this.ensureUplink();
    const ns = this.ns(id);
    if (!(await listNamespaces()).includes(ns.netns)) await createNamespace(ns, BRIDGE, true);
    return { netns: ns.netns, mac: GUEST_MAC };
  }

  async attach(vm: VmRecord): Promise<PublishedPort[]> {
    await this.ensureUplink();
    const lease = this.leases.take(vm.id, DEFAULT_NETWORK, this.subnet);
    await addressNamespace(this.ns(vm.id), lease.address, this.subnet.prefix, this.subnet.gateway);
    await this.closeProxies(vm.id);
    const proxies: PortProxy[] = [];
    try {
      for (const spec of vm.spec.ports ?? []) {
        // The host port it had before (a restart of the VM or of celld) when it asked for any.
        const before = lease.ports.find((p) => p.guestPort === spec.guestPort && p.protocol === spec.protocol && p.hostIp === spec.hostIp);
        const wanted = spec.hostPort === 0 && before ? { ...spec, hostPort: before.hostPort } : spec;
        proxies.push(await publishPort(wanted, lease.address).catch((err: unknown) => (wanted !== spec ? publishPort(spec, lease.address) : Promise.reject(err))));
      }
    } catch (err) {
      await Promise.all(proxies.map((p) => p.close()));
      throw err;
    }
    this.proxies.set(vm.id, proxies);
    const ports = proxies.map((p) => p.port);
    this.leases.setPorts(vm.id, ports);
    return ports;
  }

  private async closeProxies(id: string): Promise<void> {
    const proxies = this.proxies.get(id) ?? [];
    this.proxies.delete(id);
    await Promise.all(proxies.map((p) => p.close()));
  }

  async detach(id: string): Promise<void> {
    await this.closeProxies(id);
    await removeNamespace(this.ns(id));
  }

  forget(id: string): void {
    this.leases.release(id);
  }

  address(id: string): string | null {
    return this.leases.get(id)?.address ?? null;
  }

  ports(id: string): PublishedPort[] {
    return (this.proxies.get(id) ?? []).map((p) => p.port);
  }

  async sweep(keep: ReadonlySet<string>): Promise<void> {
    const keepPrefixes = new Set([...keep].map((id) => id.slice(0, 12)));
    for (const netns of await listNamespaces()) {
      const id = ownNamespace(this.homeTag, netns);
      if (id && !keepPrefixes.has(id)) await removeNamespace({ netns, hostVeth: `cv${id}` });
    }
  }

  async close(): Promise<void> {
    for (const id of [...this.proxies.keys()]) await this.closeProxies(id);
    this.dns?.close();
  }
}
