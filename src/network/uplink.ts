import { intToIp, type Subnet } from '../domain/network.js';
import { ipBatch, nft, tool } from './commands.js';

/**
 * The host side of the default network, in celld's namespace: a bridge the VMs' veth ends join
 * (isolated ports: VMs on it do not reach each other), its address as their router and resolver,
 * outbound NAT, and a filter on what VMs may reach: not the host itself (but its DNS relay), not
 * link-local (169.254.169.254), not loopback, not private ranges.
 */
export const BRIDGE = 'cell0';
const TABLE = 'cellvm';
const NO_GO = ['127.0.0.0/8', '169.254.0.0/16', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '0.0.0.0/8', '224.0.0.0/3'];

export async function ensureUplink(subnet: Subnet): Promise<void> {
  const cidr = `${intToIp(subnet.base)}/${subnet.prefix}`;
  const links = await tool('ip', ['-o', 'link', 'show', 'dev', BRIDGE]).catch(() => '');
  if (!links) await ipBatch([`link add ${BRIDGE} type bridge`]);
  await ipBatch([`addr replace ${subnet.gateway}/${subnet.prefix} dev ${BRIDGE}`, `link set ${BRIDGE} up`]);
  // Routing for the VMs (as Docker does for its bridge); the rules below decide what they reach.
  await tool('sysctl', ['-q', '-w', 'net.ipv4.ip_forward=1']);
  await nft(`table ip ${TABLE}
delete table ip ${TABLE}
table ip ${TABLE} {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr ${cidr} oifname != "${BRIDGE}" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${BRIDGE}" ip daddr { ${NO_GO.join(', ')} } counter drop
    iifname "${BRIDGE}" oifname "${BRIDGE}" drop
  }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "${BRIDGE}" ip daddr ${subnet.gateway} meta l4proto { tcp, udp } th dport 53 accept
    iifname "${BRIDGE}" ct state established,related accept
    iifname "${BRIDGE}" counter drop
  }
}
`);
}

