import { createHash } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { DEFAULT_NETWORK, DEFAULT_SUBNET, GUEST_MAC, intToIp, parseSubnet, previousPort, validateNetworkName, type PublishedPort, type Subnet } from '../domain/network.js';
import type { VmRecord } from '../domain/vm.js';
import { Resolver } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import { allowsAddress, allowsDomain, isPrivate } from '../domain/egress.js';
import { DnsRelay, hostResolvers } from '../network/dns-relay.js';
import { EgressProxy, type EgressDecision } from '../network/egress-proxy.js';
import { publishPort, type PortProxy } from '../network/port-proxy.js';
import { bridgeFor, DEFAULT_BRIDGE, ensureUplink, PROXY_PORTS, removeBridge, type UplinkNetwork } from '../network/uplink.js';
import { configureNamespace, countDropped, createNamespace, listNamespaces, namespaceExists, namespaceFor, ownNamespace, removeNamespace, type NamespaceLink, type VmNamespace } from '../network/vm-namespace.js';
import { tapTraffic, type NicTraffic } from '../network/traffic.js';
import type { NetworkRecord, NetworkStore } from '../store/lease-store.js';
import type { VmStore } from '../store/vm-store.js';
import type { MachineSpec } from '../vmm/backend.js';

/** A network as `cell network ls` shows it. */
export interface NetworkView {
  name: string;
  subnet: string;
  gateway: string;
  internal: boolean;
  builtin: boolean;
  createdAt: string | null;
  /** VMs on it: name and address. */
  vms: { name: string; address: string }[];
}

/**
 * VMs' networking (docs/networking.md): a namespace per machine, made before its QEMU starts;
 * an address on each of its networks, leased from the VM's creation (or connect) to its removal
 * (or disconnect); published ports while it runs. The host side (bridges, NAT, filter, DNS
 * relays) is made when a VM first needs it.
 */
export interface Networking {
  /** Whether networked VMs can run here; the reason when not (shown by `cell info`). */
  readonly status: { available: boolean; reason: string };
  /** Checks that every network exists (the default one always does), and that egress rules can be enforced. */
  assertNetworks(names: readonly string[], opts?: { egress?: boolean }): void;
  /**
   * The NIC for machine `vm.id` (a VM, or a spare that will be one): its namespace, reused if it
   * exists. With `ahead` (a spare), its addresses are leased and the namespace configured now, so
   * the fork that takes it has no network work left.
   */
  prepare(vm: VmRecord, opts?: { ahead?: boolean }): Promise<NonNullable<MachineSpec['network']>>;
  /** Once its machine runs: its addresses on its networks and its published ports. */
  attach(vm: VmRecord): Promise<PublishedPort[]>;
  /** Its machine ended for good (stopped, crashed, removed): ports closed, namespace removed. */
  detach(id: string): Promise<void>;
  /** The VM is removed: its addresses go back to their networks. */
  forget(id: string): void;
  /** A running VM joins or leaves a network (its namespace changes; its NIC does not). */
  reconfigure(vm: VmRecord): Promise<void>;
  list(): NetworkView[];
  create(name: string, opts: { subnet?: string; internal?: boolean }): Promise<NetworkView>;
  remove(name: string): Promise<void>;
  /** At start-up: namespaces of this home whose machine is not running are removed. */
  sweep(keep: ReadonlySet<string>): Promise<void>;
  /** Packets the machine's own rules dropped since it started; null where nothing counts them. */
  droppedPackets(id: string): Promise<number | null>;
  /**
   * Bytes the guest's NIC received and sent since its machine started (`cell stats`), for machine
   * `id` whose VMM runs as `pid`; null where nothing counts them (no NIC, user-mode networking).
   */
  traffic(id: string, pid: number): Promise<NicTraffic | null>;
  /** When a published port of machine `id` last carried traffic (ms; `--idle-timeout`); undefined: never, or it cannot tell. */
  lastPortTraffic(id: string): number | undefined;
  close(): Promise<void>;
}

const unavailable = (reason: string) => new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `no networking on this host: ${reason}`);

/** No networking (the fake backend, hosts without it): a networked VM is refused with the reason. */
export class NoNetworking implements Networking {
  constructor(readonly reason = 'networking is off') {}
  get status() {
    return { available: false, reason: this.reason };
  }
  assertNetworks(names: readonly string[]): void {
    if (names.length > 0) throw unavailable(this.reason);
  }
  async prepare(): Promise<never> {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `this VM needs a network, but ${this.reason}: run it with --network none`);
  }
  async attach(): Promise<PublishedPort[]> {
    return [];
  }
  async detach(): Promise<void> {}
  forget(): void {}
  async reconfigure(): Promise<never> {
    throw unavailable(this.reason);
  }
  list(): NetworkView[] {
    return [];
  }
  async create(): Promise<never> {
    throw unavailable(this.reason);
  }
  async remove(): Promise<never> {
    throw unavailable(this.reason);
  }
  async sweep(): Promise<void> {}
  async droppedPackets(): Promise<null> {
    return null;
  }
  lastPortTraffic(): undefined {
    return undefined;
  }

  async traffic(): Promise<null> {
    return null;
  }
  async close(): Promise<void> {}
}

/** Kernel networking: namespaces, bridges, nftables, DNS relays and port proxies in celld. */
export class HostNetworking implements Networking {
  private readonly defaultSubnet: Subnet;
  private readonly homeTag: string;
  private uplink: Promise<void> = Promise.resolve();
  /** Whether the host side has been loaded by this celld (once, then on network create and rm). */
  private uplinkLoaded = false;
  private readonly relays = new Map<string, DnsRelay>();
  private readonly proxiesByNetwork = new Map<string, EgressProxy>();
  private readonly resolver = new Resolver({ timeout: 3000, tries: 2 });
  private readonly proxies = new Map<string, PortProxy[]>();
  /** The networks each machine's namespace is configured for (to remove the ones it leaves). */
  private readonly configured = new Map<string, string[]>();

  constructor(
    home: string,
    private readonly store: NetworkStore,
    private readonly vms: VmStore,
    opts: { subnet?: string } = {},
  ) {
    this.defaultSubnet = parseSubnet(opts.subnet ?? DEFAULT_SUBNET);
    // Namespaces are host-wide: this home's carry its tag, so a sweep takes only its own.
    this.homeTag = createHash('sha256').update(home).digest('hex').slice(0, 6);
    const upstreams = hostResolvers();
    if (upstreams.length > 0) this.resolver.setServers(upstreams);
  }

  readonly status = { available: true, reason: 'namespaces, bridges and nftables (root)' };

  private ns(id: string): VmNamespace {
    return namespaceFor(this.homeTag, id);
  }

  private all(): UplinkNetwork[] {
    return [
      { name: DEFAULT_NETWORK, bridge: DEFAULT_BRIDGE, subnet: this.defaultSubnet, internal: false },
      ...this.store.networks().map((n) => ({ name: n.name, bridge: bridgeFor(n.name), subnet: parseSubnet(n.subnet), internal: n.internal })),
    ];
  }

  private get(name: string): UplinkNetwork {
    const found = this.all().find((n) => n.name === name);
    if (!found) throw new CellError(ErrorCodes.NOT_FOUND, `no network named ${name} (cell network ls; cell network create ${name})`);
    return found;
  }

  assertNetworks(names: readonly string[]): void {
    for (const name of names) this.get(name);
  }

  /** Bridges, rules and DNS relays for every network, one change at a time (they share one table). */
  private refreshUplink(drop?: string): Promise<void> {
    const next = this.uplink.then(async () => {
      // A removed network's relay, proxy and bridge go in the same chain, so a concurrent refresh cannot bring them back.
      if (drop) {
        this.relays.get(drop)?.close();
        this.relays.delete(drop);
        this.proxiesByNetwork.get(drop)?.close();
        this.proxiesByNetwork.delete(drop);
        await removeBridge(bridgeFor(drop));
      }
      const networks = this.all();
      await ensureUplink(networks);
      for (const n of networks) {
        if (this.relays.has(n.name)) continue;
        this.relays.set(n.name, await DnsRelay.start({ listen: n.subnet.gateway, local: (name, client) => this.resolveName(n.name, name, client) }));
      }
      for (const n of networks) {
        if (this.proxiesByNetwork.has(n.name)) continue;
        this.proxiesByNetwork.set(
          n.name,
          await EgressProxy.start({
            listen: n.subnet.gateway,
            httpPort: PROXY_PORTS.http,
            tlsPort: PROXY_PORTS.tls,
            decide: (client, host) => this.decideEgress(n.name, client, host),
            onDenied: (client) => this.countDenied(n.name, client),
          }),
        );
      }
    });
    this.uplink = next.catch(() => {});
    return next.then(() => {
      this.uplinkLoaded = true;
    });
  }

  /** The host side as this celld last loaded it; loaded now if it has not been yet. */
  private uplinkReady(): Promise<void> {
    return this.uplinkLoaded ? this.uplink : this.refreshUplink();
  }

  /**
   * VM names, answered for VMs that share a network with the asker: the address on the first
   * network they share. The default network's VMs do not see each other, so it gives no names.
   */
  private resolveName(network: string, name: string, client: string): string[] | 'nxdomain' | 'refused' | null {
    const asker = this.store.onNetwork(network).find((l) => l.address === client);
    // Not one of this network's VMs: the relay is no open resolver.
    if (!asker) return 'refused';
    const policy = this.vms.get(asker.vmId)?.spec.egress;
    if (policy && !allowsDomain(policy, name)) {
      this.store.countDenied(asker.vmId);
      return 'nxdomain';
    }
    // A VM with no way out gets no answers from outside either (DNS would be its way out: moby's CVE-2024-29018).
    const outside = this.hasWayOut(asker.vmId) ? null : 'nxdomain';
    const target = this.vms.list().find((vm) => vm.name === name.replace(/\.cell$/, ''));
    if (!target || target.id === asker.vmId) return outside;
    const mine = new Set(this.store.leases(asker.vmId).filter((l) => l.network !== DEFAULT_NETWORK).map((l) => l.network));
    const shared = this.store.leases(target.id).find((l) => mine.has(l.network));
    return shared ? [shared.address] : outside;
  }

  /** Whether one of the VM's networks is not --internal. */
  private hasWayOut(vmId: string): boolean {
    const networks = this.vms.get(vmId)?.spec.networks ?? [];
    const all = this.all();
    return networks.some((n) => all.some((u) => u.name === n && !u.internal));
  }

  /**
   * A connection the egress proxy took from the VM at `client`: allowed by name, resolved here
   * (the guest's own DNS answers count for nothing), the address checked again (a name that
   * resolves to a denied or private address is refused: DNS rebinding).
   */
  private async decideEgress(network: string, client: string, host: string): Promise<EgressDecision> {
    const lease = this.store.onNetwork(network).find((l) => l.address === client);
    const policy = lease ? this.vms.get(lease.vmId)?.spec.egress : undefined;
    if (!lease || !policy) return { allow: false, reason: 'not a VM with egress rules' };
    // The proxy connects from celld's namespace: a VM whose networks are all --internal has no way out through it either.
    if (!this.hasWayOut(lease.vmId)) return { allow: false, reason: 'its networks are internal' };
    if (!allowsDomain(policy, host)) return { allow: false, reason: `${host} is not allowed` };
    const addresses = await this.resolver.resolve4(host).catch(() => [] as string[]);
    const address = addresses[0];
    if (!address) return { allow: false, reason: `${host} does not resolve` };
    const privateAllowed = policy.allow.cidrs.length > 0 && allowsAddress({ ...policy, allow: { domains: [], cidrs: policy.allow.cidrs } }, address);
    if (isPrivate(address) && !privateAllowed) return { allow: false, reason: `${host} resolves to ${address}, a private address` };
    if (!allowsAddress(policy, address, true)) return { allow: false, reason: `${host} resolves to ${address}, which is denied` };
    // The proxy's own host (its public address too, which no private range names): never, as for packets.
    if (isHostAddress(address)) return { allow: false, reason: `${host} resolves to ${address}, an address of this host` };
    return { allow: true, address };
  }

  private countDenied(network: string, client: string): void {
    const lease = this.store.onNetwork(network).find((l) => l.address === client);
    if (lease) this.store.countDenied(lease.vmId);
  }

  async prepare(vm: VmRecord, opts: { ahead?: boolean } = {}): Promise<NonNullable<MachineSpec['network']>> {
    const ns = this.ns(vm.id);
    if (!namespaceExists(ns)) {
      await createNamespace(ns);
      // Made here just now: it has no veth pair yet (configure need not look).
      this.configured.set(vm.id, []);
    }
    if (opts.ahead) await this.configure(vm);
    return { netns: ns.netns, mac: GUEST_MAC };
  }

  /** Leases for the VM's networks (taken now if new) and its namespace configured for them. */
  private async configure(vm: VmRecord): Promise<void> {
    const names = vm.spec.networks ?? [];
    // Configured already for these networks (a spare made ahead, a snapshot's resume): nothing to do.
    const done = this.configured.get(vm.id);
    const held = this.store.leases(vm.id);
    if (done && done.join('\0') === names.join('\0') && held.length === names.length) return;
    const networks = names.map((n) => this.get(n));
    // Reloading every bridge and rule on each boot costs several processes: once per celld is enough
    // (network create and rm reload it themselves).
    await this.uplinkReady();
    for (const old of held) if (!names.includes(old.network)) this.store.release(vm.id, old.network);
    const links: NamespaceLink[] = networks.map((n, position) => {
      const lease = this.store.take(vm.id, n.name, n.subnet, position);
      return {
        network: n.name,
        bridge: n.bridge,
        isolated: n.name === DEFAULT_NETWORK,
        address: lease.address,
        prefix: n.subnet.prefix,
        cidr: `${intToIp(n.subnet.base)}/${n.subnet.prefix}`,
        gateway: n.subnet.gateway,
        outbound: !n.internal,
      };
    });
    const egress = vm.spec.egress ? { policy: vm.spec.egress, proxy: PROXY_PORTS } : undefined;
    await configureNamespace(this.ns(vm.id), links, [...(done ?? []), ...held.map((l) => l.network)], egress, done);
    this.configured.set(vm.id, names);
  }

  async attach(vm: VmRecord): Promise<PublishedPort[]> {
    await this.configure(vm);
    const way = this.store.leases(vm.id)[0];
    await this.closeProxies(vm.id);
    const ports = vm.spec.ports ?? [];
    if (ports.length === 0 || !way) return [];
    const before = this.store.ports(vm.id);
    const proxies: PortProxy[] = [];
    try {
      for (const spec of ports) {
        // The host port it had before (a restart of the VM or of celld) when it asked for any.
        const old = previousPort(before, spec);
        const wanted = spec.hostPort === 0 && old ? { ...spec, hostPort: old.hostPort } : spec;
        proxies.push(await publishPort(wanted, way.address).catch((err: unknown) => (wanted !== spec ? publishPort(spec, way.address) : Promise.reject(err))));
      }
    } catch (err) {
      await Promise.all(proxies.map((p) => p.close()));
      throw err;
    }
    this.proxies.set(vm.id, proxies);
    const published = proxies.map((p) => p.port);
    this.store.setPorts(vm.id, published);
    return published;
  }

  async reconfigure(vm: VmRecord): Promise<void> {
    await this.configure(vm);
  }

  private async closeProxies(id: string): Promise<void> {
    const proxies = this.proxies.get(id) ?? [];
    this.proxies.delete(id);
    await Promise.all(proxies.map((p) => p.close()));
  }

  async detach(id: string): Promise<void> {
    await this.closeProxies(id);
    await removeNamespace(this.ns(id), this.configured.get(id) ?? []);
    this.configured.delete(id);
  }

  forget(id: string): void {
    this.store.release(id);
    this.store.forgetPorts(id);
  }

  list(): NetworkView[] {
    const byId = new Map(this.vms.list().map((vm) => [vm.id, vm.name]));
    const records = new Map(this.store.networks().map((n) => [n.name, n]));
    return this.all().map((n) => ({
      name: n.name,
      subnet: `${intToIp(n.subnet.base)}/${n.subnet.prefix}`,
      gateway: n.subnet.gateway,
      internal: n.internal,
      builtin: n.name === DEFAULT_NETWORK,
      createdAt: records.get(n.name)?.createdAt ?? null,
      vms: this.store.onNetwork(n.name).map((l) => ({ name: byId.get(l.vmId) ?? l.vmId.slice(0, 12), address: l.address })),
    }));
  }

  async create(name: string, opts: { subnet?: string; internal?: boolean }): Promise<NetworkView> {
    validateNetworkName(name);
    if (name === DEFAULT_NETWORK) throw new CellError(ErrorCodes.CONFLICT, 'the default network is built in');
    const subnet = opts.subnet ? parseSubnet(opts.subnet) : this.freeSubnet();
    const cidr = `${intToIp(subnet.base)}/${subnet.prefix}`;
    for (const other of this.all()) {
      if (overlaps(subnet, other.subnet)) throw new CellError(ErrorCodes.CONFLICT, `subnet ${cidr} overlaps network ${other.name}'s ${intToIp(other.subnet.base)}/${other.subnet.prefix}`);
    }
    const record: NetworkRecord = { name, subnet: cidr, internal: opts.internal ?? false, createdAt: new Date().toISOString() };
    this.store.insertNetwork(record);
    try {
      await this.refreshUplink();
    } catch (err) {
      this.store.deleteNetwork(name);
      throw err;
    }
    return this.list().find((n) => n.name === name)!;
  }

  /** 10.90.0.0/24, 10.90.1.0/24, ...: the first /24 no network overlaps. */
  private freeSubnet(): Subnet {
    const taken = this.all().map((n) => n.subnet);
    for (let i = 0; i < 65536; i++) {
      const candidate = parseSubnet(`10.${90 + Math.floor(i / 256)}.${i % 256}.0/24`);
      if (!taken.some((t) => overlaps(candidate, t))) return candidate;
    }
    throw new CellError(ErrorCodes.RESOURCES_EXHAUSTED, 'no free subnet left: give one with --subnet');
  }

  async remove(name: string): Promise<void> {
    if (name === DEFAULT_NETWORK) throw new CellError(ErrorCodes.CONFLICT, 'the default network is built in and cannot be removed');
    this.get(name);
    const users = this.store.onNetwork(name);
    if (users.length > 0) {
      const names = users.map((l) => this.vms.get(l.vmId)?.name ?? l.vmId.slice(0, 12));
      throw new CellError(ErrorCodes.CONFLICT, `network ${name} is in use by ${names.join(', ')}: remove them or disconnect them first`);
    }
    this.store.deleteNetwork(name);
    await this.refreshUplink(name);
  }

  async droppedPackets(id: string): Promise<number | null> {
    const ns = this.ns(id);
    return namespaceExists(ns) ? countDropped(ns) : null;
  }

  /** The counters of the namespace's tap, as QEMU (in the namespace) sees them; a VM without a NIC has no namespace. */
  lastPortTraffic(id: string): number | undefined {
    const times = (this.proxies.get(id) ?? []).map((p) => p.lastTrafficAt).filter((t): t is number => t !== undefined);
    return times.length > 0 ? Math.max(...times) : undefined;
  }

  async traffic(id: string, pid: number): Promise<NicTraffic | null> {
    return namespaceExists(this.ns(id)) ? tapTraffic(pid) : null;
  }

  async sweep(keep: ReadonlySet<string>): Promise<void> {
    this.store.releaseUnowned();
    const keepPrefixes = new Set([...keep].map((id) => id.slice(0, 12)));
    for (const netns of await listNamespaces()) {
      const id = ownNamespace(this.homeTag, netns);
      if (id && !keepPrefixes.has(id)) await removeNamespace(this.ns(id), []);
    }
  }

  async close(): Promise<void> {
    for (const id of [...this.proxies.keys()]) await this.closeProxies(id);
    for (const relay of this.relays.values()) relay.close();
    this.relays.clear();
    for (const proxy of this.proxiesByNetwork.values()) proxy.close();
    this.proxiesByNetwork.clear();
  }
}

function isHostAddress(address: string): boolean {
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => i.family === 'IPv4' && i.address === address));
}

function overlaps(a: Subnet, b: Subnet): boolean {
  const aEnd = a.base + 2 ** (32 - a.prefix);
  const bEnd = b.base + 2 ** (32 - b.prefix);
  return a.base < bEnd && b.base < aEnd;
}
