import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DATA_DISK_MOUNT, type VmRecord } from '../domain/vm.js';
import { homeTmpPrefix, type CellPaths } from '../domain/paths.js';
import type { EngineContext } from './context.js';

export const CONVERTER_ID_FILE = 'machine-id';

/** Converters' folders in /tmp, one prefix per CELL_HOME so a celld sweeps only its own. */
export function conversionDirPrefix(paths: Pick<CellPaths, 'home'>): string {
  return homeTmpPrefix(paths.home, 'conv');
}

/**
 * A VM restored from a snapshot maps that snapshot's RAM privately, so QEMU cannot hand its RAM
 * over as a file: a snapshot of it saves the RAM inside the state stream (`full-state`). To keep
 * every snapshot forkable with shared memory, a short-lived paused QEMU with the same devices loads
 * that stream into a MAP_SHARED file in the snapshot (`memory`) and saves the device state alone.
 */
export async function convertToSharedMemory(ctx: Pick<EngineContext, 'host' | 'backend' | 'paths' | 'stores'>, vm: VmRecord, staging: string): Promise<void> {
  const ready = await ctx.host.ensure();
  const vmDir = ctx.paths.vmDir(vm.id);
  // Sockets need a short path; the converter's disk is an overlay on the VM's (it never runs).
  const dir = await mkdtemp(conversionDirPrefix(ctx.paths));
  const id = `conv${vm.id}`;
  // Recovery after a crash finds this converter by its folder and ends it (snapshot-recovery.ts).
  await writeFile(join(dir, CONVERTER_ID_FILE), id);
  let pid: number | undefined;
  try {
    const started = await ctx.backend.start({
      id,
      dir,
      kernelPath: ready.assets.kernel.path,
      initrdPath: ready.assets.initramfs.path,
      baseDiskPath: join(vmDir, 'disk.qcow2'),
      baseDiskFormat: 'qcow2',
      cpus: vm.spec.cpus,
      memoryMib: vm.spec.memoryMib,
      hostname: 'convert',
      accelerator: ready.accelerator.accelerator,
      memory: { path: join(staging, 'memory'), shared: true },
      // The same devices as the VM, or its state would not load: its data disk too, if it has one.
      dataDisk: existsSync(join(vmDir, 'data.qcow2'))
        ? { baseDiskPath: join(vmDir, 'data.qcow2'), baseDiskFormat: 'qcow2', mountPoint: DATA_DISK_MOUNT }
        : undefined,
      // And its volumes' disks (read-only: the converter never runs the guest); a running VM's volumes exist.
      volumes: (vm.spec.volumes ?? []).flatMap((m) => {
        const record = ctx.stores.volumes.byName(m.volume);
        return record ? [{ imagePath: ctx.paths.volumeImage(record.id), mountPoint: m.path, readOnly: true }] : [];
      }),
      incoming: true,
    });
    pid = started.pid;
    await started.control.loadState(join(staging, 'full-state'), { withRam: true });
    await started.control.saveState(join(staging, 'state'), { withRam: false });
    await started.control.quit().catch(() => {});
    started.control.close();
  } finally {
    if (pid !== undefined) await ctx.backend.kill(pid, id);
    await rm(dir, { recursive: true, force: true });
    await rm(join(staging, 'full-state'), { force: true });
  }
}
