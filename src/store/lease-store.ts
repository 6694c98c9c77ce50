import type { Db } from './database.js';
import type { PublishedPort } from '../domain/network.js';
import { intToIp, ipToInt, type Subnet } from '../domain/network.js';
import { CellError, ErrorCodes } from '../domain/errors.js';

/** A named network as recorded (the default network is built in and has no row). */
export interface NetworkRecord {
  name: string;
  subnet: string;
  /** No way out of the host: its VMs reach each other and nothing else. */
  internal: boolean;
  createdAt: string;
}

export interface Lease {
  vmId: string;
  network: string;
  address: string;
  /** Order of the VM's networks: the lowest is its way out. */
  position: number;
}

interface LeaseRow {
  vm_id: string;
  network: string;
  address: string;
  position: number;
}

interface NetworkRow {
  name: string;
  subnet: string;
  internal: number;
  created_at: string;
}

const toLease = (r: LeaseRow): Lease => ({ vmId: r.vm_id, network: r.network, address: r.address, position: r.position });
const toNetwork = (r: NetworkRow): NetworkRecord => ({ name: r.name, subnet: r.subnet, internal: r.internal !== 0, createdAt: r.created_at });

/** Networks, the addresses VMs hold on them, and the host ports VMs' published ports last got. */
export class NetworkStore {
  constructor(private readonly db: Db) {}

  networks(): NetworkRecord[] {
    return (this.db.prepare('SELECT * FROM networks ORDER BY name').all() as NetworkRow[]).map(toNetwork);
  }

  network(name: string): NetworkRecord | undefined {
    const row = this.db.prepare('SELECT * FROM networks WHERE name = ?').get(name) as NetworkRow | undefined;
    return row && toNetwork(row);
  }

  insertNetwork(n: NetworkRecord): void {
    try {
      this.db.prepare('INSERT INTO networks (name, subnet, internal, created_at) VALUES (?, ?, ?, ?)').run(n.name, n.subnet, n.internal ? 1 : 0, n.createdAt);
    } catch (err) {
      if (err instanceof Error && /UNIQUE constraint failed: networks.name/.test(err.message)) throw new CellError(ErrorCodes.CONFLICT, `a network named ${n.name} exists already`);
      if (err instanceof Error && /UNIQUE constraint failed: networks.subnet/.test(err.message)) throw new CellError(ErrorCodes.CONFLICT, `subnet ${n.subnet} is another network's already`);
      throw err;
    }
  }

  deleteNetwork(name: string): void {
    this.db.prepare('DELETE FROM networks WHERE name = ?').run(name);
  }

  /** A VM's leases, its way out first. */
  leases(vmId: string): Lease[] {
    return (this.db.prepare('SELECT * FROM network_leases WHERE vm_id = ? ORDER BY position, network').all(vmId) as LeaseRow[]).map(toLease);
  }

  onNetwork(network: string): Lease[] {
    return (this.db.prepare('SELECT * FROM network_leases WHERE network = ? ORDER BY address').all(network) as LeaseRow[]).map(toLease);
  }

  /** The VM's address on `network`, or a new one: the lowest free one of `subnet`, in one transaction. */
  take(vmId: string, network: string, subnet: Subnet, position: number): Lease {
    return this.db.transaction(() => {
      const held = this.leases(vmId).find((l) => l.network === network);
      if (held) return held;
      const used = new Set(this.onNetwork(network).map((l) => ipToInt(l.address)));
      for (let n = subnet.first; n <= subnet.last; n++) {
        if (used.has(n)) continue;
        const lease: Lease = { vmId, network, address: intToIp(n), position };
        this.db.prepare('INSERT INTO network_leases (vm_id, network, address, position) VALUES (?, ?, ?, ?)').run(vmId, network, lease.address, position);
        return lease;
      }
      throw new CellError(ErrorCodes.RESOURCES_EXHAUSTED, `network ${network} has no free address left (${used.size} in use)`);
    })();
  }

  /** Gives back the addresses of machines that are not VMs (spares of a celld that died); how many. */
  releaseUnowned(): number {
    return this.db.prepare('DELETE FROM network_leases WHERE vm_id NOT IN (SELECT id FROM vms)').run().changes;
  }

  release(vmId: string, network?: string): void {
    if (network) this.db.prepare('DELETE FROM network_leases WHERE vm_id = ? AND network = ?').run(vmId, network);
    else this.db.prepare('DELETE FROM network_leases WHERE vm_id = ?').run(vmId);
  }

  ports(vmId: string): PublishedPort[] {
    return this.recordedPorts(vmId) ?? [];
  }

  /** Its published ports, or null when none were ever recorded. */
  recordedPorts(vmId: string): PublishedPort[] | null {
    const row = this.db.prepare('SELECT ports FROM published_ports WHERE vm_id = ?').get(vmId) as { ports: string } | undefined;
    return row ? (JSON.parse(row.ports) as PublishedPort[]) : null;
  }

  setPorts(vmId: string, ports: PublishedPort[]): void {
    this.db.prepare('INSERT INTO published_ports (vm_id, ports) VALUES (?, ?) ON CONFLICT (vm_id) DO UPDATE SET ports = excluded.ports').run(vmId, JSON.stringify(ports));
  }

  forgetPorts(vmId: string): void {
    this.db.prepare('DELETE FROM published_ports WHERE vm_id = ?').run(vmId);
    this.db.prepare('DELETE FROM egress_denied WHERE vm_id = ?').run(vmId);
  }

  /** Connections and DNS questions its egress rules refused. */
  denied(vmId: string): number {
    return (this.db.prepare('SELECT denied FROM egress_denied WHERE vm_id = ?').get(vmId) as { denied: number } | undefined)?.denied ?? 0;
  }

  countDenied(vmId: string): void {
    this.db.prepare('INSERT INTO egress_denied (vm_id, denied) VALUES (?, 1) ON CONFLICT (vm_id) DO UPDATE SET denied = denied + 1').run(vmId);
  }
}
