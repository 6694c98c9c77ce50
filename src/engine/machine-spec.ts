import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ImageRecord } from '../domain/image.js';
import { assertCompatible, type SnapshotRecord } from '../domain/snapshot.js';
import { DATA_DISK_MOUNT, newVmRecord, type VmRecord } from '../domain/vm.js';
import { ensureEmptyExt4 } from '../host/empty-ext4.js';
import type { MachineSpec } from '../vmm/backend.js';
import type { Engine, RestoreRequest } from './engine.js';
import type { HostReady } from './host-readiness.js';
import type { PreparedRestore } from './live-machines.js';
import { guestHostname } from './vm-records.js';

/** What QEMU needs to boot VM `vm` (or, with `restore`, to bring it back from the snapshot). */
export async function machineSpecFor(engine: Engine, vm: VmRecord, ready: HostReady, image: ImageRecord | undefined, restore?: Pick<RestoreRequest, 'snapshot' | 'copyMemory'>): Promise<MachineSpec> {
  const snapshotDir = restore ? engine.snapshotDir(restore.snapshot.id) : undefined;
  return {
    id: vm.id,
    dir: engine.vmDir(vm.id),
    kernelPath: ready.assets.kernel.path,
    initrdPath: ready.assets.initramfs.path,
    ...baseDiskOf(engine, vm, image),
    dataDisk: await dataDiskOf(engine, vm),
    cpus: vm.spec.cpus,
    memoryMib: vm.spec.memoryMib,
    hostname: guestHostname(vm.name, vm.id),
    accelerator: ready.accelerator.accelerator,
    memory:
      snapshotDir && !restore?.copyMemory
        ? { path: join(snapshotDir, 'memory'), shared: false }
        : { path: engine.memoryPath(vm.id), shared: true },
  };
}

/** A spare for the pool: a fork of `snapshot` restored up to its first instruction, as VM `id` will be. */
export async function prepareSpare(engine: Engine, id: string, snapshot: SnapshotRecord): Promise<PreparedRestore> {
  const ready = await engine.host.ensure();
  assertCompatible(snapshot.compat, engine.compatKey(ready), snapshot.name);
  const placeholder = newVmRecord(id, 'spare', snapshot.spec, snapshot.id);
  // Spares wait in spares/<id>/; the fork that takes one moves the folder to vms/<id>/.
  const dir = engine.spareDir(id);
  await mkdir(dir, { recursive: true });
  try {
    const spec = { ...(await machineSpecFor(engine, placeholder, ready, undefined, { snapshot })), dir };
    return await engine.live.prepareRestore(spec, join(engine.snapshotDir(snapshot.id), 'state'));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/** A VM's overlay sits on its snapshot's frozen layer, or on its image's base disk. */
export function baseDiskOf(engine: Engine, vm: VmRecord, image: ImageRecord | undefined): { baseDiskPath: string; baseDiskFormat: 'raw' | 'qcow2' } {
  if (vm.baseSnapshot) return { baseDiskPath: join(engine.paths.snapshots, vm.baseSnapshot, 'disk.qcow2'), baseDiskFormat: 'qcow2' };
  return { baseDiskPath: (image ?? engine.images.require(vm.spec.image)).diskPath, baseDiskFormat: 'raw' };
}

/**
 * A VM's data disk overlay sits on its snapshot's frozen data layer, or (a new data disk) on a
 * shared empty ext4 image of its size.
 */
export async function dataDiskOf(engine: Engine, vm: VmRecord): Promise<MachineSpec['dataDisk']> {
  const mib = vm.spec.dataDiskMib ?? 0;
  if (mib <= 0) return undefined;
  const layer = vm.baseSnapshot ? join(engine.paths.snapshots, vm.baseSnapshot, 'data.qcow2') : undefined;
  if (layer && existsSync(layer)) return { baseDiskPath: layer, baseDiskFormat: 'qcow2', mountPoint: DATA_DISK_MOUNT };
  return { baseDiskPath: await ensureEmptyExt4(engine.paths.cache, mib), baseDiskFormat: 'raw', mountPoint: DATA_DISK_MOUNT };
}
