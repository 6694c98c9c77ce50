import { readFile } from 'node:fs/promises';
import { TAP } from './vm-namespace.js';

/** Bytes a guest's NIC moved, from the guest's side: `rxBytes` it received, `txBytes` it sent. */
export interface NicTraffic {
  rxBytes: number;
  txBytes: number;
}

/** One interface's byte counters in a `/proc/net/dev` table: [received, transmitted]; null when absent. */
export function netDevBytes(table: string, dev: string): [number, number] | null {
  for (const line of table.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim() !== dev) continue;
    // Receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes ...
    const fields = line.slice(colon + 1).trim().split(/\s+/).map(Number);
    const rx = fields[0];
    const tx = fields[8];
    if (rx === undefined || tx === undefined || !Number.isSafeInteger(rx) || !Number.isSafeInteger(tx)) return null;
    return [rx, tx];
  }
  return null;
}

/**
 * The guest's traffic through its tap, read from QEMU's own view of the network: QEMU runs in the
 * VM's namespace (nsenter execs it, same pid), so `/proc/PID/net/dev` is that namespace's table, a
 * file read rather than a process per sample. The tap is the host's end: what it receives the
 * guest sent. Null when the process or its tap is gone.
 */
export async function tapTraffic(pid: number): Promise<NicTraffic | null> {
  const table = await readFile(`/proc/${pid}/net/dev`, 'utf8').catch(() => null);
  const bytes = table === null ? null : netDevBytes(table, TAP);
  return bytes && { rxBytes: bytes[1], txBytes: bytes[0] };
}
