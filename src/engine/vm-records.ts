import { shortId } from '../domain/ids.js';
import type { VmExit } from '../domain/vm.js';

export function exitInfo(reason: string, exitCode: number | null = null, signal: number | null = null): VmExit {
  return { reason, exitCode, signal, at: new Date().toISOString() };
}

/** A valid RFC 1123 label from the VM name (what the agent accepts), else the short id. */
export function guestHostname(name: string, id: string): string {
  const label = name
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .slice(0, 63)
    .replace(/^-+|-+$/g, '');
  return label || shortId(id);
}
