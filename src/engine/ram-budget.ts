import { existsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { mayHaveMachine } from '../domain/vm-state.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import { allocatedBytes } from '../host/files.js';

const MIB = 1024 * 1024;

/**
 * Guest RAM files live on one tmpfs (/dev/shm) and are sparse: each grows as its guest touches
 * memory. If they outgrow the tmpfs, the guest that faults next dies with SIGBUS, whichever VM it
 * is. So a VM gets a RAM file only if the file system has room for all of it plus what every
 * other VM's file may still grow by; otherwise it is refused up front with the numbers.
 */
export async function assertRamFits(ctx: Pick<EngineContext, 'paths' | 'stores'>, vm: VmRecord): Promise<void> {
  const fs = await statfs(ctx.paths.memory);
  const free = fs.bavail * fs.bsize;
  let growth = 0;
  for (const other of ctx.stores.vms.list()) {
    if (other.id === vm.id || !mayHaveMachine(other.state)) continue;
    const file = ctx.paths.memoryFile(other.id);
    // Forks map their snapshot's RAM privately: they hold no file here.
    if (!existsSync(file)) continue;
    growth += Math.max(0, other.spec.memoryMib * MIB - (await allocatedBytes(file)));
  }
  const need = vm.spec.memoryMib * MIB;
  if (need + growth > free) {
    throw new CellError(
      ErrorCodes.RESOURCES_EXHAUSTED,
      `no room for VM ${vm.name}'s RAM in ${ctx.paths.memory}: it needs up to ${need / MIB} MiB and running VMs may still claim ${Math.ceil(growth / MIB)} MiB, but ${Math.floor(free / MIB)} MiB are free (stop a VM, or give the tmpfs more room)`,
      { needBytes: need, growthBytes: growth, freeBytes: free },
    );
  }
}
