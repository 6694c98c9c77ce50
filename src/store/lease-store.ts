import type { Db } from './database.js';
import type { PublishedPort } from '../domain/network.js';
import { intToIp, ipToInt, type Subnet } from '../domain/network.js';
import { CellError, ErrorCodes } from '../domain/errors.js';

export interface Lease {
  vmId: string;
  network: string;
  address: string;
  /** The host ports its published ports last got (kept so a restart binds the same ones). */
  ports: PublishedPort[];
}

interface LeaseRow {
  vm_id: string;
  network: string;
  address: string;
  ports: string;
}

const toLease = (r: LeaseRow): Lease => ({ vmId: r.vm_id, network: r.network, address: r.address, ports: JSON.parse(r.ports) as PublishedPort[] });

/** Addresses VMs hold on networks. One writer (celld); the table's keys make a clash impossible. */
export class LeaseStore {
  constructor(private readonly db: Db) {}

  get(vmId: string): Lease | undefined {
    const row = this.db.prepare('SELECT * FROM network_leases WHERE vm_id = ?').get(vmId) as LeaseRow | undefined;
    return row && toLease(row);
  }

  list(network?: string): Lease[] {
    const rows = (network ? this.db.prepare('SELECT * FROM network_leases WHERE network = ?').all(network) : this.db.prepare('SELECT * FROM network_leases').all()) as LeaseRow[];
    return rows.map(toLease);
  }

  /** The VM's lease, or a new one: the lowest free address of `subnet`, in one transaction. */
  take(vmId: string, network: string, subnet: Subnet): Lease {
    return this.db.transaction(() => {
      const held = this.get(vmId);
      if (held) return held;
      const used = new Set(this.list(network).map((l) => ipToInt(l.address)));
      for (let n = subnet.first; n <= subnet.last; n++) {
        if (used.has(n)) continue;
        const lease: Lease = { vmId, network, address: intToIp(n), ports: [] };
        this.db.prepare('INSERT INTO network_leases (vm_id, network, address) VALUES (?, ?, ?)').run(vmId, network, lease.address);
        return lease;
      }
      throw new CellError(ErrorCodes.RESOURCES_EXHAUSTED, `network ${network} has no free address left (${used.size} in use)`);
    })();
  }

  setPorts(vmId: string, ports: PublishedPort[]): void {
    this.db.prepare('UPDATE network_leases SET ports = ? WHERE vm_id = ?').run(JSON.stringify(ports), vmId);
  }

  release(vmId: string): void {
    this.db.prepare('DELETE FROM network_leases WHERE vm_id = ?').run(vmId);
  }
}
