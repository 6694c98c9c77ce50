import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Markers in a VM's folder that say it is not finished: `creating` from its record until its first
 * boot succeeded, `ephemeral` for a VM an engine operation makes and removes itself (an action's,
 * a template build's). A celld that dies leaves them; the next one removes such VMs, so a run,
 * fork or build cut short leaves no half-made VM behind.
 */
const CREATING = 'creating';
const EPHEMERAL = 'ephemeral';

export async function markHalfMade(vmDir: string, ephemeral: boolean): Promise<void> {
  await writeFile(join(vmDir, CREATING), '', { mode: 0o600 });
  if (ephemeral) await writeFile(join(vmDir, EPHEMERAL), '', { mode: 0o600 });
}

export async function clearCreating(vmDir: string): Promise<void> {
  await rm(join(vmDir, CREATING), { force: true });
}

/** Whether a VM found after a restart is half-made: still being created, or an operation's own. */
export function halfMade(vmDir: string, running: boolean): boolean {
  if (existsSync(join(vmDir, EPHEMERAL))) return true;
  // A VM whose first boot got as far as running is finished, marker or not.
  return existsSync(join(vmDir, CREATING)) && !running;
}
