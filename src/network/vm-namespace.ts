import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { GATEWAY_MAC, GUEST_ADDRESS, GUEST_GATEWAY, GUEST_PREFIX } from '../domain/network.js';
import { hasAllowRules, hasDomainRules, PRIVATE_RANGES, type EgressPolicy } from '../domain/egress.js';
import { inNetns, ipBatch, nft, tool } from './commands.js';

/**
 * A VM's own network namespace (Firecracker's network-for-clones, E2B's sandboxes): QEMU runs in
 * it and its tap0 is the guest's link, the same GUEST_ADDRESS in every VM. For each network the VM
 * is on, a veth pair joins the namespace to that network's bridge in celld's namespace; the
 * namespace translates the guest's address to the VM's address on each network and back. Joining
 * or leaving a network is adding or removing a veth here: it works on a running VM, whose single
 * NIC never changes. A fork's namespace is new, so connections its snapshot had open are reset.
 */
export interface VmNamespace {
  /** The namespace's name under /run/netns. */
  netns: string;
  /** Prefix of its veth ends in celld's namespace. */
  vethPrefix: string;
}

/** One network the VM is on, as its namespace sees it. */
export interface NamespaceLink {
  network: string;
  bridge: string;
  /** Ports isolated from each other on the bridge (the default network: VMs do not reach each other). */
  isolated: boolean;
  address: string;
  prefix: number;
  /** The network's subnet, as a CIDR. */
  cidr: string;
  gateway: string;
  /** Has a way out (not --internal): the first such link carries the default route. */
  outbound: boolean;
}

export const TAP = 'tap0';

/** Names for machine `id` of the celld whose home is tagged `home` (so a sweep takes only its own). */
export function namespaceFor(home: string, id: string): VmNamespace {
  return { netns: `cell-${home}-${id.slice(0, 12)}`, vethPrefix: `cv${id.slice(0, 8)}` };
}

/** Parses a namespace name back: the machine id prefix, if it is one of `home`'s. */
export function ownNamespace(home: string, netns: string): string | null {
  const m = new RegExp(`^cell-${home}-([0-9a-f]{12})$`).exec(netns);
  return m ? m[1]! : null;
}

const tag = (network: string) => createHash('sha256').update(network).digest('hex').slice(0, 4);
/** The veth's end inside the namespace, and in celld's (15 bytes at most, stable per network). */
const inner = (network: string) => `n-${tag(network)}`;
const outer = (ns: VmNamespace, network: string) => `${ns.vethPrefix}${tag(network)}`;

/** Makes the namespace with its tap, on no network yet. Whatever fails half-way is removed. */
export async function createNamespace(ns: VmNamespace): Promise<void> {
  await tool('ip', ['netns', 'add', ns.netns]);
  try {
    // QEMU opens the tap by name while still root, before -runas.
    await ipBatch(['link set lo up', `tuntap add dev ${TAP} mode tap`, `link set ${TAP} address ${GATEWAY_MAC}`, `addr add ${GUEST_GATEWAY}/${GUEST_PREFIX} dev ${TAP}`, `link set ${TAP} up`], ns.netns);
    // Forwarding between tap0 and the networks here only; no IPv6 (the rules are IPv4). A packet of
    // a connection the snapshot had open is not taken up mid-stream as a new one (the kernel's
    // default): it is invalid, and the guest gets a reset. That key exists once conntrack is loaded
    // on the host (-e: a host where it is not yet has the ruleset's non-SYN rule alone).
    await inNetns(ns.netns, 'sysctl', ['-q', '-e', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1', 'net.netfilter.nf_conntrack_tcp_loose=0']);
  } catch (err) {
    await removeNamespace(ns, []);
    throw err;
  }
}

/**
 * Makes the namespace's links exactly `links` (adding and removing veth pairs), addressed, routed
 * and filtered: the translation both ways on each, DNS sent to the first network's gateway, the
 * default route through the first link with a way out, and a filter the guest cannot change
 * (only its own address leaves, nothing reaches the namespace itself, stale connections reset).
 */
/** Egress rules as the namespace enforces them (docs/networking.md, "Egress"). */
export interface NamespaceEgress {
  policy: EgressPolicy;
  /** celld's egress proxy on the first network's gateway: HTTP and TLS ports. */
  proxy: { http: number; tls: number };
}

/**
 * `linked`: the networks whose veth pairs the namespace is known to have (a namespace this celld
 * just made has none); unknown (a celld that reattached), they are looked up.
 */
export async function configureNamespace(
  ns: VmNamespace,
  links: readonly NamespaceLink[],
  previous: readonly string[],
  egress?: NamespaceEgress,
  linked?: readonly string[],
): Promise<void> {
  const wanted = new Set(links.map((l) => l.network));
  const gone = previous.filter((n) => !wanted.has(n));
  if (gone.length > 0) await ipBatch(gone.map((n) => `link del ${outer(ns, n)}`)).catch(() => {});
  const present = linked ? null : await tool('ip', ['-n', ns.netns, '-o', 'link', 'show']);
  const has = (network: string) => (present === null ? linked!.includes(network) : present.includes(`: ${inner(network)}@`));
  // Every missing pair in one `ip` process.
  const missing = links.filter((link) => !has(link.network));
  if (missing.length > 0) {
    await ipBatch(
      missing.flatMap((link) => [
        `link add ${outer(ns, link.network)} type veth peer name ${inner(link.network)} netns ${ns.netns}`,
        `link set ${outer(ns, link.network)} master ${link.bridge}`,
        ...(link.isolated ? [`link set ${outer(ns, link.network)} type bridge_slave isolated on`] : []),
        `link set ${outer(ns, link.network)} up`,
      ]),
    );
  }
  const way = links.find((l) => l.outbound);
  await ipBatch(
    [
      ...links.flatMap((l) => [`addr replace ${l.address}/${l.prefix} dev ${inner(l.network)}`, `link set ${inner(l.network)} up`]),
      ...(way ? [`route replace default via ${way.gateway} dev ${inner(way.network)}`] : ['route flush default']),
    ],
    ns.netns,
  );
  const dns = links[0];
  const rule = (l: NamespaceLink) => inner(l.network);
  const subnets = links.map((l) => l.cidr);
  const policy = egress?.policy;
  // Domain rules: web traffic not meant for a VM network goes through celld's proxy, which reads the name asked for.
  const proxied = dns && egress && hasDomainRules(policy)
    ? `    iifname "${TAP}" ip daddr != { ${subnets.join(', ')} } tcp dport 80 dnat to ${dns.gateway}:${egress.proxy.http}
    iifname "${TAP}" ip daddr != { ${subnets.join(', ')} } tcp dport 443 dnat to ${dns.gateway}:${egress.proxy.tls}`
    : '';
  const set = (items: readonly string[]) => `{ ${items.join(', ')} }`;
  const guestOut = [
    // The guest's resolver and, with domain rules, celld's proxy (both on the first gateway).
    // (Only the guest's own address gets this far: a spoofed source would have the relay answer,
    // and forward upstream, for whoever it names.)
    ...(dns ? [`iifname "${TAP}" ip daddr ${dns.gateway} meta l4proto { tcp, udp } th dport 53 accept`] : []),
    ...(dns && egress && hasDomainRules(policy) ? [`iifname "${TAP}" ip daddr ${dns.gateway} tcp dport { ${egress.proxy.http}, ${egress.proxy.tls} } accept`] : []),
    ...(policy?.deny.cidrs.length ? [`iifname "${TAP}" ip daddr ${set(policy.deny.cidrs)} counter drop`] : []),
    // Other VMs on its networks.
    ...links.map((l) => `iifname "${TAP}" oifname "${rule(l)}" ip saddr ${GUEST_ADDRESS} ip daddr ${l.cidr} accept`),
    ...(policy?.allow.cidrs.length ? [`iifname "${TAP}" ip saddr ${GUEST_ADDRESS} ip daddr ${set(policy.allow.cidrs)} accept`] : []),
    `iifname "${TAP}" ip daddr ${set(PRIVATE_RANGES)} counter drop`,
    ...(hasAllowRules(policy) ? [`iifname "${TAP}" counter drop`] : []),
  ];
  await nft(
    `table ip cell
delete table ip cell
table ip cell {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
${links.map((l) => `    iifname "${rule(l)}" ip daddr ${l.address} dnat to ${GUEST_ADDRESS}`).join('\n')}
${dns ? `    iifname "${TAP}" ip daddr ${GUEST_GATEWAY} meta l4proto { tcp, udp } th dport 53 dnat to ${dns.gateway}` : ''}
${proxied}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
${links.map((l) => `    oifname "${rule(l)}" ip saddr ${GUEST_ADDRESS} snat to ${l.address}`).join('\n')}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid meta l4proto tcp reject with tcp reset
    ct state invalid drop
    # A TCP packet that is no SYN yet starts a connection here is mid-stream: the connection it
    # belongs to was open in a snapshot (or this table is new). Reset, whatever
    # nf_conntrack_tcp_loose says (a host that had no conntrack loaded when the namespace was made has it at 1).
    iifname "${TAP}" ct state new tcp flags & (fin | syn | rst | ack) != syn reject with tcp reset
    iifname "${TAP}" ip saddr != ${GUEST_ADDRESS} counter drop
${guestOut.map((r) => `    ${r}`).join('\n')}
${links
  .map(
    (l) => `    iifname "${TAP}" oifname "${rule(l)}" ip saddr ${GUEST_ADDRESS} accept
    iifname "${rule(l)}" oifname "${TAP}" ct state established,related accept
    iifname "${rule(l)}" oifname "${TAP}" ct status dnat accept`,
  )
  .join('\n')}
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
  }
}
`,
    ns.netns,
  );
}

/**
 * The packets the namespace's `counter drop` rules dropped (its table is reloaded on connect and
 * disconnect, which starts them again). Read as nft's JSON: bounded by `tool`'s output cap.
 */
export async function countDropped(ns: VmNamespace): Promise<number> {
  const out = await inNetns(ns.netns, 'nft', ['-j', 'list', 'table', 'ip', 'cell']);
  const items = (JSON.parse(out) as { nftables?: { rule?: { expr?: Record<string, unknown>[] } }[] }).nftables ?? [];
  let dropped = 0;
  for (const item of items) {
    const expr = item.rule?.expr ?? [];
    if (!expr.some((e) => 'drop' in e)) continue;
    for (const e of expr) {
      const packets = (e.counter as { packets?: unknown } | undefined)?.packets;
      if (typeof packets === 'number' && Number.isSafeInteger(packets)) dropped += packets;
    }
  }
  return dropped;
}

/** Deleting the namespace takes its tap, the veth pairs and its rules with it. Idempotent. */
export async function removeNamespace(ns: VmNamespace, networks: readonly string[]): Promise<void> {
  await tool('ip', ['netns', 'del', ns.netns]).catch(() => {});
  if (networks.length > 0) await ipBatch(networks.map((n) => `link del ${outer(ns, n)}`)).catch(() => {});
}

/** Whether the namespace exists: a stat, not `ip netns list` (a process). */
export function namespaceExists(ns: VmNamespace): boolean {
  return existsSync(`/run/netns/${ns.netns}`);
}

/** Every namespace under /run/netns. */
export async function listNamespaces(): Promise<string[]> {
  const out = await tool('ip', ['netns', 'list']).catch(() => '');
  return out
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}
