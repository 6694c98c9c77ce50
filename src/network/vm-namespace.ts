import { GUEST_ADDRESS, GUEST_GATEWAY, GUEST_PREFIX } from '../domain/network.js';
import { inNetns, ipBatch, nft, tool } from './commands.js';

/**
 * A VM's own network namespace (Firecracker's network-for-clones, E2B's sandboxes): QEMU runs in
 * it and its tap0 is the guest's link, the same GUEST_ADDRESS in every VM. eth0 is one end of a veth
 * pair whose other end is on the network's bridge in celld's namespace; the namespace translates
 * the guest's address to the VM's own address there and back. A fork's namespace is new, so
 * connections that were open in its snapshot find no state and are reset.
 */
export interface VmNamespace {
  /** The namespace's name under /run/netns. */
  netns: string;
  /** The veth end on the bridge, in celld's namespace. */
  hostVeth: string;
}

export const TAP = 'tap0';
const INNER = 'eth0';

/** Names for machine `id` of the celld whose home hashes to `home` (so a sweep takes only its own). */
export function namespaceFor(home: string, id: string): VmNamespace {
  return { netns: `cell-${home}-${id.slice(0, 12)}`, hostVeth: `cv${id.slice(0, 12)}` };
}

/** Parses a namespace name back: the machine id prefix, if it is one of `home`'s. */
export function ownNamespace(home: string, netns: string): string | null {
  const m = new RegExp(`^cell-${home}-([0-9a-f]{12})$`).exec(netns);
  return m ? m[1]! : null;
}

/**
 * Makes the namespace with its tap and its veth end on `bridge`, not yet addressed (a spare is made
 * before it knows which VM it will be). Whatever fails half-way is removed.
 */
export async function createNamespace(ns: VmNamespace, bridge: string, isolated: boolean): Promise<void> {
  await tool('ip', ['netns', 'add', ns.netns]);
  try {
    await ipBatch([
      `link add ${ns.hostVeth} type veth peer name ${INNER} netns ${ns.netns}`,
      `link set ${ns.hostVeth} master ${bridge}`,
      ...(isolated ? [`link set ${ns.hostVeth} type bridge_slave isolated on`] : []),
      `link set ${ns.hostVeth} up`,
    ]);
    await ipBatch(
      [
        'link set lo up',
        // QEMU opens it by name while still root, before -runas.
        `tuntap add dev ${TAP} mode tap`,
        `addr add ${GUEST_GATEWAY}/${GUEST_PREFIX} dev ${TAP}`,
        `link set ${TAP} up`,
        `link set ${INNER} up`,
      ],
      ns.netns,
    );
    // Forwarding between tap0 and eth0 here only; no IPv6 (the rules below are IPv4).
    await inNetns(ns.netns, 'sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  } catch (err) {
    await removeNamespace(ns);
    throw err;
  }
}

/**
 * Gives the namespace the VM's `address` on its network: routes via `gateway` (the bridge), the
 * translation both ways, DNS sent to the gateway, and a filter the guest cannot change: only its own
 * address leaves, nothing reaches the namespace itself, stale connections are reset.
 */
export async function addressNamespace(ns: VmNamespace, address: string, prefix: number, gateway: string): Promise<void> {
  await ipBatch([`addr replace ${address}/${prefix} dev ${INNER}`, `route replace default via ${gateway} dev ${INNER}`], ns.netns);
  await nft(
    `table ip cell
delete table ip cell
table ip cell {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    iifname "${INNER}" ip daddr ${address} dnat to ${GUEST_ADDRESS}
    iifname "${TAP}" ip daddr ${GUEST_GATEWAY} meta l4proto { tcp, udp } th dport 53 dnat to ${gateway}
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "${INNER}" ip saddr ${GUEST_ADDRESS} snat to ${address}
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid meta l4proto tcp reject with tcp reset
    ct state invalid drop
    iifname "${TAP}" oifname "${INNER}" ip saddr ${GUEST_ADDRESS} accept
    iifname "${INNER}" oifname "${TAP}" ct state established,related accept
    iifname "${INNER}" oifname "${TAP}" ct status dnat accept
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
  // A packet of a connection the snapshot had open is not taken up mid-stream as a new one (the
  // kernel's default): it is invalid, and the guest gets a reset. Set once conntrack is loaded.
  await inNetns(ns.netns, 'sysctl', ['-q', '-w', 'net.netfilter.nf_conntrack_tcp_loose=0']);
}

/** Deleting the namespace takes its tap, both veth ends and its rules with it. Idempotent. */
export async function removeNamespace(ns: VmNamespace): Promise<void> {
  await tool('ip', ['netns', 'del', ns.netns]).catch(() => {});
  await tool('ip', ['link', 'del', ns.hostVeth]).catch(() => {});
}

/** Every namespace under /run/netns. */
export async function listNamespaces(): Promise<string[]> {
  const out = await tool('ip', ['netns', 'list']).catch(() => '');
  return out
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}
