import { createHash } from 'node:crypto';
import { CellError, ErrorCodes } from './errors.js';
import type { VmSpec } from './vm.js';

/**
 * What a saved VM state depends on. QEMU can only load state saved by the same machine model, CPU
 * model and devices; the guest only makes sense with the same kernel and initramfs. Restoring
 * across a mismatch would hang or crash the guest, so it is refused up front.
 */
export interface CompatKey {
  qemuVersion: string;
  machine: string;
  cpuModel: string;
  accelerator: string;
  kernelDigest: string;
  initramfsDigest: string;
}

export function compatKeyHash(key: CompatKey): string {
  const canonical = JSON.stringify([key.qemuVersion, key.machine, key.cpuModel, key.accelerator, key.kernelDigest, key.initramfsDigest]);
  return createHash('sha256').update(canonical).digest('hex');
}

/** Throws `incompatible_snapshot` naming every field that differs. */
export function assertCompatible(snapshot: CompatKey, host: CompatKey, snapshotName: string): void {
  const fields = Object.keys(host) as (keyof CompatKey)[];
  const diffs = fields.filter((f) => snapshot[f] !== host[f]).map((f) => `${f} ${snapshot[f]} (here: ${host[f]})`);
  if (diffs.length > 0) {
    throw new CellError(
      ErrorCodes.INCOMPATIBLE_SNAPSHOT,
      `snapshot ${snapshotName} was taken on an incompatible host: ${diffs.join(', ')}`,
      { snapshot, host },
    );
  }
}

export interface SnapshotRecord {
  id: string;
  name: string;
  /** The VM it was taken from (it may have been removed since). */
  parentVm: string | null;
  parentVmName: string | null;
  /** The snapshot that VM was itself restored or forked from: the lineage. */
  parentSnapshot: string | null;
  /** The VM's spec when it was taken: image, cpus, memory, env, working dir, user. */
  spec: VmSpec;
  compat: CompatKey;
  stateBytes: number;
  /** Disk its RAM file uses of its own: allocated bytes, or the pages it changed when it is a reflink clone of its parent's. */
  memoryBytes: number;
  diskBytes: number;
  createdAt: string;
}
