import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DATA_DISK_MOUNT, type VmRecord } from '../domain/vm.js';
import { restoreState, saveState } from '../vmm/qemu/migration.js';
import type { Engine } from './engine.js';

/**
 * A VM restored from a snapshot maps that snapshot's RAM privately, so QEMU cannot hand its RAM
 * over as a file: a snapshot of it saves the RAM inside the state stream (`full-state`). To keep
 * every snapshot forkable with shared memory, a short-lived paused QEMU with the same devices loads
 * that stream into a MAP_SHARED file in the snapshot (`memory`) and saves the device state alone.
 */
export async function convertToSharedMemory(engine: Engine, vm: VmRecord, staging: string): Promise<void> {
  const ready = await engine.host.ensure();
  // Sockets need a short path; the converter's disk is an overlay on the VM's (it never runs).
  const dir = await mkdtemp('/tmp/cell-conv-');
  const id = `conv${vm.id}`;
  let pid: number | undefined;
  try {
    const started = await engine.backend.start({
      id,
      dir,
      kernelPath: ready.assets.kernel.path,
      initrdPath: ready.assets.initramfs.path,
      baseDiskPath: join(engine.vmDir(vm.id), 'disk.qcow2'),
      baseDiskFormat: 'qcow2',
      cpus: vm.spec.cpus,
      memoryMib: vm.spec.memoryMib,
      hostname: 'convert',
      accelerator: ready.accelerator.accelerator,
      memory: { path: join(staging, 'memory'), shared: true },
      // The same devices as the VM, or its state would not load: its data disk too, if it has one.
      dataDisk: existsSync(join(engine.vmDir(vm.id), 'data.qcow2'))
        ? { baseDiskPath: join(engine.vmDir(vm.id), 'data.qcow2'), baseDiskFormat: 'qcow2', mountPoint: DATA_DISK_MOUNT }
        : undefined,
      incoming: true,
    });
    pid = started.pid;
    await restoreState(started.qmp, join(staging, 'full-state'), { ignoreShared: false });
    await saveState(started.qmp, join(staging, 'state'), { ignoreShared: true });
    await started.qmp.execute('quit').catch(() => {});
    started.qmp.close();
  } finally {
    if (pid !== undefined) await engine.backend.kill(pid, id);
    await rm(dir, { recursive: true, force: true });
    await rm(join(staging, 'full-state'), { force: true });
  }
}
