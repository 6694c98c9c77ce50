import { randomBytes } from 'node:crypto';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { mountsBlockingSnapshot } from '../domain/volume.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import { dropSavedMemory } from './retired-snapshots.js';
import type { Snapshots } from './snapshots.js';
import type { Vms } from './vms.js';

/**
 * `cell pause --to-disk` and its unpause (E2B's pause/resume): the VM's memory, devices and disk
 * go into a snapshot of its own, its QEMU ends (the host's RAM is freed), and it waits `suspended`;
 * unpause restores it from that snapshot under the same id and name, with its processes and
 * files. The snapshot is retired at once (no list shows it, no fork can take it) and its RAM file
 * goes as soon as the VM runs on its own copy of it; its disk layer stays under the VM's overlay.
 * Each cycle's layer stacks on the last, as snapshots of a VM always do.
 */
export class Suspends {
  constructor(
    private readonly ctx: Pick<EngineContext, 'stores' | 'db' | 'paths' | 'live'>,
    private readonly vms: Vms,
    private readonly snapshots: Snapshots,
  ) {}

  /** Running or paused: saved to disk and ended. A suspended VM stays as it is. */
  suspend(ref: string): Promise<VmRecord> {
    const vm = this.vms.resolve(ref);
    return this.vms.withLock(vm.id, async () => {
      const { stores } = this.ctx;
      let current = stores.vms.get(vm.id)!;
      if (current.state === 'suspended') return current;
      const blocking = mountsBlockingSnapshot(current.spec);
      if (blocking) throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} ${blocking}: it cannot be paused to disk, which is a snapshot (docs/volumes.md)`);
      if (current.state === 'paused') {
        // The snapshot pauses it again at once; its guest needs to run to sync its disks first.
        await this.ctx.live.require(vm.id).control.resume();
        current = stores.vms.setState(vm.id, 'running');
      }
      if (current.state !== 'running') {
        throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state}): only a running or paused VM can be paused to disk`);
      }
      // The snapshot's last transaction retires it and leaves the VM suspended (also when recovery finishes it).
      await this.snapshots.takeLocked(vm.id, { name: `${vm.name}-suspended-${randomBytes(3).toString('hex')}`, suspend: true });
      return stores.vms.get(vm.id)!;
    });
  }

  /** A suspended VM comes back from its memory; anything else is Vms.unpause's. */
  async resume(ref: string): Promise<VmRecord> {
    const vm = this.vms.resolve(ref);
    if (vm.state !== 'suspended') return this.vms.unpause(ref);
    return this.vms.withLock(vm.id, async () => {
      const current = this.ctx.stores.vms.get(vm.id)!;
      if (current.state !== 'suspended') {
        if (current.state === 'running') return current;
        throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name} is not paused (state: ${current.state})`);
      }
      const snapshot = current.baseSnapshot ? this.ctx.stores.snapshots.getAny(current.baseSnapshot) : undefined;
      if (!snapshot) throw new CellError(ErrorCodes.NOT_FOUND, `VM ${vm.name}: the snapshot holding its memory is gone; cell stop ${vm.name} lets it boot from its disk`);
      let running: VmRecord;
      try {
        running = await this.vms.boot(vm.id, { snapshot, copyMemory: true });
      } catch (err) {
        // Its saved memory is still there (dropped only below): it stays paused to disk, to be tried again.
        if (this.ctx.stores.vms.get(vm.id)?.state === 'stopped') this.ctx.stores.vms.setState(vm.id, 'suspended', { exit: null });
        throw err;
      }
      // It runs on its own copy of the RAM: the saved one is needed no more (its disk layer is).
      await dropSavedMemory(this.ctx.paths.snapshotDir(snapshot.id));
      return running;
    });
  }
}
