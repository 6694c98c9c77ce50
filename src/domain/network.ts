import { CellError, ErrorCodes } from './errors.js';

/**
 * Networking rules (docs/networking.md). Every VM sees the same guest side: eth0 at GUEST_ADDRESS
 * with GUEST_GATEWAY as router and resolver. The host gives each VM a network namespace of its own
 * in which that address is translated to the VM's own address on its network, so forks of one
 * snapshot never clash and need no change inside the guest.
 */
export const GUEST_ADDRESS = '172.30.255.2';
export const GUEST_GATEWAY = '172.30.255.1';
export const GUEST_PREFIX = 30;
/** Locally administered, the same in every VM (each is alone on its link). */
export const GUEST_MAC = '52:54:00:ce:11:02';
/**
 * The gateway's side (tap0 in each VM's namespace): fixed too. A fork comes out of its snapshot
 * with the gateway's MAC in its ARP cache; a tap with a MAC of its own would drop the fork's
 * frames until that entry went stale (tens of seconds with no way out, replies included).
 */
export const GATEWAY_MAC = '52:54:00:ce:11:01';

/** The network every VM is on unless it asks for none. */
export const DEFAULT_NETWORK = 'default';
export const DEFAULT_SUBNET = '10.89.0.0/16';

/** `none` as the only --network: no NIC at all. */
export const NO_NETWORK = 'none';

const NAME = /^[a-z0-9][a-z0-9_.-]{0,31}$/;

/** A network's name: lower case, digits, `_.-`, up to 32; not `none`. */
export function validateNetworkName(name: string): string {
  if (!NAME.test(name) || name === NO_NETWORK) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `network name "${name}": use up to 32 of a-z, 0-9, _ . - (starting with a letter or digit), not "none"`);
  }
  return name;
}

/** The networks `--network` asks for (repeatable; `none` alone means no NIC), in order, once each. */
export function parseNetworks(values: readonly string[] | undefined): string[] | undefined {
  if (values === undefined || values.length === 0) return undefined;
  if (values.includes(NO_NETWORK)) {
    if (values.length > 1) throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--network none cannot be combined with other networks');
    return [];
  }
  if (values.length > 8) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `at most 8 networks per VM, not ${values.length}`);
  const names = values.map(validateNetworkName);
  if (new Set(names).size !== names.length) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'a network is named twice');
  return names;
}

export type PortProtocol = 'tcp' | 'udp';

/** A published port as asked: `-p [HOST_IP:][HOST_PORT:]GUEST_PORT[/PROTO]`. */
export interface PortSpec {
  hostIp: string;
  /** 0: any free port, picked when the VM starts. */
  hostPort: number;
  guestPort: number;
  protocol: PortProtocol;
}

/** A fork's published ports: its snapshot's, each on a free host port (its source may hold the one it asked for). */
export function forkPorts(ports: readonly PortSpec[] | undefined): PortSpec[] | undefined {
  return ports?.map((p) => ({ ...p, hostPort: 0 }));
}

/** The port `spec` was published on before (a restart of the VM or of celld), if it was. */
export function previousPort(before: readonly PublishedPort[], spec: PortSpec): PublishedPort | undefined {
  return before.find((p) => p.guestPort === spec.guestPort && p.protocol === spec.protocol && p.hostIp === spec.hostIp);
}

/** A published port as it is: the host port it got. */
export interface PublishedPort extends PortSpec {
  hostPort: number;
}

/**
 * Docker's `-p` syntax, except that without a host address the port binds 127.0.0.1 (sandboxes run
 * untrusted code: reaching them from other hosts is asked for with 0.0.0.0).
 */
export function parsePortSpec(text: string): PortSpec {
  const bad = (why: string) => new CellError(ErrorCodes.INVALID_ARGUMENT, `-p ${text}: ${why} (forms: 8080:80, 127.0.0.1:8080:80, 5353:53/udp, 80)`);
  const [main = '', proto = 'tcp', ...extra] = text.trim().split('/');
  if (extra.length > 0 || (proto !== 'tcp' && proto !== 'udp')) throw bad('the protocol is tcp or udp');
  const parts = main.split(':');
  if (parts.length > 3 || parts.some((p, i) => p === '' && !(parts.length === 3 && i === 1))) throw bad('expected [HOST_IP:][HOST_PORT:]GUEST_PORT');
  const guestPort = port(parts[parts.length - 1]!, bad, false);
  const hostPort = parts.length >= 2 ? port(parts[parts.length - 2]! || '0', bad, true) : 0;
  const hostIp = parts.length === 3 ? parts[0]! : '127.0.0.1';
  if (!isIpv4(hostIp)) throw bad(`${hostIp} is not an IPv4 address`);
  return { hostIp, hostPort, guestPort, protocol: proto };
}

function port(text: string, bad: (why: string) => CellError, zeroOk: boolean): number {
  if (!/^\d{1,5}$/.test(text)) throw bad(`"${text}" is not a port number`);
  const n = Number(text);
  if (n > 65535 || (n === 0 && !zeroOk)) throw bad(`${n} is not a port from 1 to 65535`);
  return n;
}

/** A published port as asked for over the API: the host side may be left out. */
export type PortRequest = Partial<PortSpec> & { guestPort: number };

export function validatePorts(ports: readonly PortRequest[]): PortSpec[] {
  if (ports.length > 64) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `at most 64 published ports, not ${ports.length}`);
  const seen = new Set<string>();
  return ports.map((p) => {
    const checked = parsePortSpec(`${p.hostIp ?? '127.0.0.1'}:${p.hostPort ?? 0}:${p.guestPort}/${p.protocol ?? 'tcp'}`);
    const key = `${checked.hostIp}:${checked.hostPort}/${checked.protocol}`;
    if (checked.hostPort !== 0 && seen.has(key)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `host port ${key} is published twice`);
    seen.add(key);
    return checked;
  });
}

export function formatPort(p: PublishedPort): string {
  return `${p.hostIp}:${p.hostPort}->${p.guestPort}/${p.protocol}`;
}

export function isIpv4(text: string): boolean {
  const parts = text.split('.');
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255 && String(Number(p)) === p);
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, p) => n * 256 + Number(p), 0);
}

export function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

export interface Subnet {
  /** The network address, e.g. 10.89.0.0. */
  base: number;
  prefix: number;
  /** The host side's address: the first one. */
  gateway: string;
  /** Addresses VMs may get: from the second to the one before broadcast. */
  first: number;
  last: number;
}

export function parseSubnet(cidr: string): Subnet {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d{1,2})$/.exec(cidr);
  const prefix = m ? Number(m[2]) : NaN;
  if (!m || !isIpv4(m[1]!) || prefix < 8 || prefix > 28) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `subnet ${cidr}: expected an IPv4 CIDR from /8 to /28, like 10.89.0.0/16`);
  }
  const size = 2 ** (32 - prefix);
  const base = Math.floor(ipToInt(m[1]!) / size) * size;
  return { base, prefix, gateway: intToIp(base + 1), first: base + 2, last: base + size - 2 };
}

/** The kernel argument that configures the guest's eth0 (guest/net.c). */
export const GUEST_NET_ARG = `cell.net=${GUEST_ADDRESS}/${GUEST_PREFIX},${GUEST_GATEWAY}`;

/**
 * QEMU's user-mode networking (a celld without root): the same guest address and gateway, but
 * QEMU's slirp wants its DNS server on an address of its own in the guest's subnet, so the subnet
 * is a /29 (in a /30, .3 is the broadcast address, which a resolver may not send to) and the
 * resolver is named in the kernel argument.
 */
export const USER_NET = { cidr: '172.30.255.0/29', prefix: 29, resolver: '172.30.255.3' } as const;
export const USER_NET_ARG = `cell.net=${GUEST_ADDRESS}/${USER_NET.prefix},${GUEST_GATEWAY},${USER_NET.resolver}`;

/** Whether a host name (no port; an IPv6 address bare or in brackets) is this machine's loopback. */
export function isLoopbackHostname(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  return bare === 'localhost' || bare === '::1' || /^127\.\d+\.\d+\.\d+$/.test(bare);
}
