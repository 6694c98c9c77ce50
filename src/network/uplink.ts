import { createHash } from 'node:crypto';
import { intToIp, type Subnet } from '../domain/network.js';
import { ipBatch, nft, tool } from './commands.js';

/**
 * The host side of the networks, in celld's namespace: a bridge per network that VMs' veth ends
 * join, its first address as their router and resolver, outbound NAT for networks with a way out,
 * and a filter on what VMs may reach: not the host itself (but the DNS relays), not another
 * network, not link-local (169.254.169.254), loopback or private ranges.
 */
export interface UplinkNetwork {
  name: string;
  bridge: string;
  subnet: Subnet;
  internal: boolean;
}

/*
 * Where br_netfilter is loaded (Docker loads it), frames bridged between two VMs of one network
 * pass this forward hook too, in and out on the same bridge: accepted first, before the drops
 * that are meant for routed traffic.
 */

/** Every bridge's name starts so: the rules below match them all with one wildcard. */
const PREFIX = 'cell';
export const DEFAULT_BRIDGE = `${PREFIX}0`;
const TABLE = 'cellvm';
// Private ranges are dropped in each VM's namespace instead, where an egress allow rule can let one through.
const NO_GO = ['127.0.0.0/8', '169.254.0.0/16', '0.0.0.0/8', '224.0.0.0/3'];
/** celld's egress proxy listens on every gateway on these ports (egress-proxy.ts). */
// Below 1024: only root can bind them, so no local user can take them before celld does and read
// the guests' web traffic (the bridge addresses outlive celld).
export const PROXY_PORTS = { http: 880, tls: 881 };

export function bridgeFor(network: string): string {
  return `${PREFIX}${createHash('sha256').update(network).digest('hex').slice(0, 8)}`;
}

const cidr = (s: Subnet) => `${intToIp(s.base)}/${s.prefix}`;

/** Makes each network's bridge (if missing) and loads the rules for all of them, atomically. */
export async function ensureUplink(networks: readonly UplinkNetwork[]): Promise<void> {
  for (const n of networks) {
    const exists = await tool('ip', ['-o', 'link', 'show', 'dev', n.bridge]).catch(() => '');
    if (!exists) await ipBatch([`link add ${n.bridge} type bridge`]);
    await ipBatch([`addr replace ${n.subnet.gateway}/${n.subnet.prefix} dev ${n.bridge}`, `link set ${n.bridge} up`]);
  }
  // Routing for the VMs (as Docker does for its bridges); the rules below decide what they reach.
  await tool('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  const open = networks.filter((n) => !n.internal);
  await nft(`table ip ${TABLE}
delete table ip ${TABLE}
table ip ${TABLE} {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
${open.map((n) => `    ip saddr ${cidr(n.subnet)} oifname != "${PREFIX}*" masquerade`).join('\n')}
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
${networks.map((n) => `    iifname "${n.bridge}" oifname "${n.bridge}" accept`).join('\n')}
    iifname "${PREFIX}*" oifname "${PREFIX}*" counter drop
${networks.filter((n) => n.internal).map((n) => `    iifname "${n.bridge}" counter drop`).join('\n')}
    iifname "${PREFIX}*" ip daddr { ${NO_GO.join(', ')} } counter drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
${networks.map((n) => `    iifname "${n.bridge}" ip daddr ${n.subnet.gateway} udp dport 53 accept\n    iifname "${n.bridge}" ip daddr ${n.subnet.gateway} tcp dport { ${PROXY_PORTS.http}, ${PROXY_PORTS.tls} } accept`).join('\n')}
    iifname "${PREFIX}*" ct state established,related accept
    # The relay is UDP only: TCP 53 would reach whatever DNS server the host runs on 0.0.0.0, past
    # the relay's policy. Reset, so the guest's resolver gives up at once.
    iifname "${PREFIX}*" tcp dport 53 reject with tcp reset
    iifname "${PREFIX}*" counter drop
    # The gateways serve their own bridges (and the host itself) only: no open resolver or proxy.
    iifname != "lo" ip daddr { ${networks.map((n) => n.subnet.gateway).join(', ')} } counter drop
  }
}
`);
}

/** A network's bridge goes (its VMs' veth ends are gone already). */
export async function removeBridge(bridge: string): Promise<void> {
  await tool('ip', ['link', 'del', bridge]).catch(() => {});
}
