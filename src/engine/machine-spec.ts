import { forkPorts } from '../domain/network.js';
import { closeSync, existsSync, rmSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { CellPaths } from '../domain/paths.js';
import type { ImageRecord } from '../domain/image.js';
import { assertCompatible, type SnapshotRecord } from '../domain/snapshot.js';
import { DATA_DISK_MOUNT, newVmRecord, type VmRecord } from '../domain/vm.js';
import { ensureEmptyExt4 } from '../host/empty-ext4.js';
import { createPrivateFile } from '../store/private-files.js';
import type { MachineSpec } from '../vmm/backend.js';
import { compatKey, type EngineContext } from './context.js';
import type { HostReady } from './host-readiness.js';
import type { PreparedRestore } from './live-machines.js';
import { guestHostname } from './vm-records.js';

/** How a VM comes back from a snapshot: RAM mapped copy-on-write from the snapshot, or a private copy. */
export interface RestoreSource {
  snapshot: SnapshotRecord;
  copyMemory?: boolean;
}

/** What the backend needs to boot VM `vm` (or, with `restore`, to bring it back from the snapshot). */
export async function machineSpecFor(paths: CellPaths, vm: VmRecord, ready: HostReady, image: ImageRecord | undefined, restore?: RestoreSource): Promise<MachineSpec> {
  const snapshotDir = restore ? paths.snapshotDir(restore.snapshot.id) : undefined;
  return {
    id: vm.id,
    dir: paths.vmDir(vm.id),
    kernelPath: ready.assets.kernel.path,
    initrdPath: ready.assets.initramfs.path,
    ...baseDiskOf(paths, vm, image),
    dataDisk: await dataDiskOf(paths, vm),
    cpus: vm.spec.cpus,
    memoryMib: vm.spec.memoryMib,
    ...(vm.spec.limits ? { limits: vm.spec.limits } : {}),
    hostname: guestHostname(vm.name, vm.id),
    accelerator: ready.accelerator.accelerator,
    memory:
      snapshotDir && !restore?.copyMemory
        ? { path: join(snapshotDir, 'memory'), shared: false }
        : { path: paths.memoryFile(vm.id), shared: true },
  };
}

/**
 * A spare for the pool: a fork of `snapshot` restored up to its first instruction, as VM `id` will
 * be, made at a background CPU share; `warm` runs it through a fork's first steps and pauses it
 * again (LiveMachines.warmUp).
 */
export async function prepareSpare(
  ctx: Pick<EngineContext, 'paths' | 'host' | 'backend' | 'live' | 'network'>,
  id: string,
  snapshot: SnapshotRecord,
  opts: { warm?: boolean } = {},
): Promise<PreparedRestore> {
  const ready = await ctx.host.ensure();
  assertCompatible(snapshot.compat, compatKey(ctx, ready), snapshot.name);
  // Its ports as its fork's will be (engine/snapshots.ts): a user-mode NIC takes them when its QEMU starts.
  const ports = forkPorts(snapshot.spec.ports);
  const placeholder = newVmRecord(id, 'spare', { ...snapshot.spec, ...(ports ? { ports } : {}) }, snapshot.id);
  // Spares wait in spares/<id>/; the fork that takes one moves the folder to vms/<id>/.
  const dir = ctx.paths.spareDir(id);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    const network = snapshot.spec.networks?.length ? await ctx.network.prepare(placeholder, { ahead: true }) : undefined;
    const spec = { ...(await machineSpecFor(ctx.paths, placeholder, ready, undefined, { snapshot })), dir, background: true, ...(network ? { network } : {}) };
    const prepared = await ctx.live.prepareRestore(spec, join(ctx.paths.snapshotDir(snapshot.id), 'state'));
    if (opts.warm) {
      try {
        await ctx.live.warmUp(spec, prepared);
      } catch (err) {
        prepared.started.control.close();
        await ctx.backend.kill(prepared.started.pid, id);
        throw err;
      }
    }
    return prepared;
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    await ctx.network.detach(id).catch(() => {});
    throw err;
  }
}

/** A VM's overlay sits on its snapshot's frozen layer, or on its image's base disk. */
function baseDiskOf(paths: CellPaths, vm: VmRecord, image: ImageRecord | undefined): { baseDiskPath: string; baseDiskFormat: 'raw' | 'qcow2' } {
  if (vm.baseSnapshot) return { baseDiskPath: join(paths.snapshotDir(vm.baseSnapshot), 'disk.qcow2'), baseDiskFormat: 'qcow2' };
  if (!image) throw new CellError(ErrorCodes.INTERNAL, `VM ${vm.name} has neither a snapshot layer nor an image to boot from`);
  return { baseDiskPath: image.diskPath, baseDiskFormat: 'raw' };
}

/**
 * A VM's data disk overlay sits on its snapshot's frozen data layer, or (a new data disk) on a
 * shared empty ext4 image of its size.
 */
async function dataDiskOf(paths: CellPaths, vm: VmRecord): Promise<MachineSpec['dataDisk']> {
  const mib = vm.spec.dataDiskMib ?? 0;
  if (mib <= 0) return undefined;
  const layer = vm.baseSnapshot ? join(paths.snapshotDir(vm.baseSnapshot), 'data.qcow2') : undefined;
  if (layer && existsSync(layer)) return { baseDiskPath: layer, baseDiskFormat: 'qcow2', mountPoint: DATA_DISK_MOUNT };
  return { baseDiskPath: await ensureEmptyExt4(paths.cache, mib), baseDiskFormat: 'raw', mountPoint: DATA_DISK_MOUNT };
}

/** A stopped VM's RAM is gone for good: free the tmpfs it held. */
export function releaseMemory(paths: CellPaths, id: string): void {
  rmSync(paths.memoryFile(id), { force: true });
}

/**
 * A cold boot's RAM file, empty, for QEMU to size and fill: made here 0600 and exclusively (QEMU
 * would open whatever is at the path, a planted symlink included, and make it 0644).
 */
export function createMemoryFile(paths: CellPaths, id: string): void {
  closeSync(createPrivateFile(paths.memoryFile(id)));
}
