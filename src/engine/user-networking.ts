import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { DEFAULT_NETWORK, GUEST_GATEWAY, GUEST_MAC, previousPort, USER_NET, type PortSpec, type PublishedPort } from '../domain/network.js';
import type { VmRecord } from '../domain/vm.js';
import type { NetworkStore } from '../store/lease-store.js';
import type { VmStore } from '../store/vm-store.js';
import type { MachineSpec } from '../vmm/backend.js';
import type { Networking, NetworkView } from './networking.js';

const ROOT_ONLY = 'this celld is not root, so its VMs use QEMU user-mode networking, which has only the default network';

/**
 * A celld without root cannot make namespaces, bridges or taps: each VM gets QEMU's user-mode
 * stack instead (slirp, inside its QEMU). It gives the way out (TCP, UDP and DNS through the
 * host's own sockets) and published ports (QEMU listens on them: `hostfwd`). What needs the
 * host's kernel is refused with a line that says so: named networks, egress rules, connect and
 * disconnect. Nothing is left on the host when a QEMU ends: its sockets end with it.
 */
export class UserNetworking implements Networking {
  /** Ports picked for a machine before its QEMU starts, recorded once it runs. */
  private readonly picked = new Map<string, PublishedPort[]>();

  constructor(
    private readonly store: NetworkStore,
    private readonly vms: VmStore,
    readonly reason = 'user-mode (QEMU slirp): celld is not root; no named networks, no egress rules, and VMs reach the host\'s loopback services at their gateway',
  ) {}

  get status() {
    return { available: true, reason: this.reason };
  }

  assertNetworks(names: readonly string[], opts: { egress?: boolean } = {}): void {
    const named = names.filter((n) => n !== DEFAULT_NETWORK);
    if (named.length > 0) throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `network ${named[0]}: ${ROOT_ONLY} (run celld as root for named networks)`);
    if (opts.egress) throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `egress rules are enforced by the host's kernel: ${ROOT_ONLY} (run celld as root, or drop --egress)`);
  }

  async prepare(vm: VmRecord): Promise<NonNullable<MachineSpec['network']>> {
    const before = this.store.ports(vm.id);
    const forwards: PublishedPort[] = [];
    for (const spec of vm.spec.ports ?? []) {
      // The host port it had before (a restart) when it asked for any, if that one is still free.
      const old = previousPort(before, spec);
      const taken = forwards.filter((f) => f.protocol === spec.protocol).map((f) => f.hostPort);
      const reuse = spec.hostPort === 0 && old && !taken.includes(old.hostPort) ? await freePort({ ...spec, hostPort: old.hostPort }).catch(() => null) : null;
      forwards.push({ ...spec, hostPort: reuse ?? (await freePort(spec, taken)) });
    }
    this.picked.set(vm.id, forwards);
    return { user: { forwards }, mac: GUEST_MAC };
  }

  async attach(vm: VmRecord): Promise<PublishedPort[]> {
    // A celld that restarted finds the ports in the store; a VM it just booted, in `picked`.
    const ports = this.picked.get(vm.id) ?? this.store.ports(vm.id);
    this.picked.delete(vm.id);
    // Recorded even when empty: a VM with a user-mode NIC has this and no address lease (vm-store.ts).
    this.store.setPorts(vm.id, ports);
    return ports;
  }

  async detach(id: string): Promise<void> {
    this.picked.delete(id);
  }

  forget(id: string): void {
    this.picked.delete(id);
    this.store.forgetPorts(id);
  }

  async reconfigure(): Promise<never> {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `${ROOT_ONLY}: a running VM cannot join or leave one`);
  }

  list(): NetworkView[] {
    const vms = this.vms.list().filter((vm) => vm.spec.networks?.includes(DEFAULT_NETWORK));
    return [
      {
        name: DEFAULT_NETWORK,
        subnet: USER_NET.cidr,
        gateway: GUEST_GATEWAY,
        internal: false,
        builtin: true,
        createdAt: null,
        // Each VM is alone in its own QEMU's network, at the same address.
        vms: vms.map((vm) => ({ name: vm.name, address: vm.network?.networks[0]?.address ?? '-' })),
      },
    ];
  }

  async create(): Promise<never> {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `${ROOT_ONLY}: run celld as root to create networks`);
  }

  async remove(name: string): Promise<never> {
    if (name === DEFAULT_NETWORK) throw new CellError(ErrorCodes.CONFLICT, 'the default network is built in and cannot be removed');
    throw new CellError(ErrorCodes.NOT_FOUND, `no network named ${name} (${ROOT_ONLY})`);
  }

  async sweep(): Promise<void> {}

  /** QEMU's user-mode stack drops nothing by rule. */
  async droppedPackets(): Promise<null> {
    return null;
  }

  /** QEMU's user-mode stack keeps no byte counters the host can read: null, not 0. */
  /** QEMU's hostfwd relays published ports itself: celld does not see their traffic. */
  lastPortTraffic(): undefined {
    return undefined;
  }

  async traffic(): Promise<null> {
    return null;
  }

  async close(): Promise<void> {
    this.picked.clear();
  }
}

/**
 * A host port QEMU can listen on for `spec`: the one asked for if it is free (checked here, so a
 * taken one is a clear error rather than a QEMU that fails to start), or any free one. The port is
 * let go before QEMU takes it: another process could take it in between, and QEMU then fails with
 * its own message.
 */
async function freePort(spec: PortSpec, exclude: readonly number[] = []): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await probePort(spec).catch((err: NodeJS.ErrnoException) => {
      if (spec.hostPort === 0) throw err;
      const why = err.code === 'EADDRINUSE' ? 'is in use' : err.code === 'EACCES' ? 'needs root (below 1024)' : err.code === 'EADDRNOTAVAIL' ? 'is not an address of this host' : err.message;
      throw new CellError(ErrorCodes.CONFLICT, `host port ${spec.hostIp}:${spec.hostPort}/${spec.protocol} ${why}`);
    });
    if (spec.hostPort !== 0 || !exclude.includes(port)) return port;
  }
  throw new CellError(ErrorCodes.RESOURCES_EXHAUSTED, `no free ${spec.protocol} port on ${spec.hostIp}`);
}

function probePort(spec: PortSpec): Promise<number> {
  return new Promise((resolve, reject) => {
    if (spec.protocol === 'udp') {
      const socket = createSocket('udp4');
      socket.once('error', (err) => {
        socket.close();
        reject(err);
      });
      socket.bind(spec.hostPort, spec.hostIp, () => {
        const port = socket.address().port;
        socket.close(() => resolve(port));
      });
      return;
    }
    const server = createServer();
    server.once('error', reject);
    server.listen({ port: spec.hostPort, host: spec.hostIp, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}
