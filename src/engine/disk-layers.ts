import { execFile } from 'node:child_process';
import { copyFile, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { fileDigest } from '../image/digest.js';
import { ArtifactTypes, MAX_DISK_DELTAS, type Descriptor } from '../domain/snapshot-artifact.js';
import { indexedAncestors, readBlobIndex, type DiskBlob } from './blob-index.js';
import type { EngineContext } from './context.js';
import { assertStandaloneQcow2, flattenDisk, tool } from './snapshot-archive.js';

/**
 * A snapshot's disk at a registry as layers (domain/snapshot-artifact.ts): a standalone qcow2, then
 * deltas in order. Locally a snapshot's disk is already a qcow2 overlay on its parent's; push sends
 * that overlay alone (its backing file name left out) when the registry holds every layer of the
 * parent's disk, else the whole disk flattened. Pull rebuilds the disk on the nearest ancestor here
 * whose layers are a prefix of the artifact's, else on the fetched base, and flattens it: a pulled
 * snapshot's disk stands alone, as an imported one's does.
 */
const run = promisify(execFile);

async function backingOf(path: string): Promise<string | null> {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', path], { maxBuffer: 1024 * 1024 });
  const backing = (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'];
  return backing ? resolve(dirname(path), backing) : null;
}

export interface PushDisk {
  /** The layers, base first; `path` set for those to upload from this host (a delta or the whole disk). */
  layers: { desc: Descriptor; path: string }[];
  /** What the disk is at the registry once pushed (this snapshot's blob index). */
  index: DiskBlob[];
}

/** The disk of `snapshot` as layers to push; `work` is a scratch folder of the push's own. */
export async function diskForPush(
  ctx: Pick<EngineContext, 'paths' | 'stores'>,
  snapshot: SnapshotRecord,
  work: string,
  has: (digest: string) => Promise<boolean>,
): Promise<PushDisk> {
  const own = join(ctx.paths.snapshotDir(snapshot.id), 'disk.qcow2');
  const parent = snapshot.parentSnapshot ? ctx.stores.snapshots.getAny(snapshot.parentSnapshot) : undefined;
  if (parent) {
    const parentDir = ctx.paths.snapshotDir(parent.id);
    const { disk: parentLayers } = await readBlobIndex(parentDir);
    const known = parentLayers.length > 0 && parentLayers.length <= MAX_DISK_DELTAS && (await Promise.all(parentLayers.map((l) => has(l.digest)))).every(Boolean);
    if (known && (await backingOf(own).catch(() => null)) === join(parentDir, 'disk.qcow2')) {
      // Its own overlay is what it changed over its parent's disk; the path to that disk means nothing elsewhere.
      const delta = join(work, 'disk-delta.qcow2');
      await copyFile(own, delta);
      await tool('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-b', '', delta], 'cutting the disk layer loose from its parent failed');
      const ownLayer = { desc: await describe(delta, ArtifactTypes.DISK_DELTA), path: delta };
      const layers = [...parentLayers.map((l, i) => ({ desc: { mediaType: i === 0 ? ArtifactTypes.DISK : ArtifactTypes.DISK_DELTA, ...l }, path: '' })), ownLayer];
      return { layers, index: layers.map((l) => ({ digest: l.desc.digest, size: l.desc.size })) };
    }
  }
  const whole = join(work, 'disk.qcow2');
  await flattenDisk(own, whole, 'the disk layer');
  const desc = await describe(whole, ArtifactTypes.DISK);
  return { layers: [{ desc, path: whole }], index: [{ digest: desc.digest, size: desc.size }] };
}

async function describe(path: string, mediaType: string): Promise<Descriptor> {
  return { mediaType, digest: await fileDigest(path), size: (await stat(path)).size };
}

/** The artifact's disk layers, base first. */
export function diskLayersOf(artifact: { disk: Descriptor; diskDeltas: Descriptor[] }): Descriptor[] {
  return [artifact.disk, ...artifact.diskDeltas];
}

/** An ancestor here whose disk is the first `count` layers of the artifact's: the pull fetches only the rest. */
export interface LocalDiskBase {
  path: string;
  count: number;
}

/** The nearest ancestor (the snapshot it was taken on, and up) with the longest prefix of `layers`, that leaves at least the last layer to fetch. */
export async function localDiskBase(ctx: Pick<EngineContext, 'paths' | 'stores'>, parentId: string | null, layers: readonly Descriptor[]): Promise<LocalDiskBase | null> {
  let best: LocalDiskBase | null = null;
  for await (const { dir, index: { disk } } of indexedAncestors(ctx, parentId)) {
    const prefix = disk.length > 0 && disk.length < layers.length && disk.every((l, i) => l.digest === layers[i]!.digest);
    if (prefix && (!best || disk.length > best.count)) best = { path: join(dir, 'disk.qcow2'), count: disk.length };
  }
  return best;
}

/**
 * Writes the standalone disk `target` from `base` (an ancestor's disk here, or the fetched base
 * layer) and the fetched deltas over it, in order. Every fetched layer is checked to name no
 * backing or data file before it is used (a registry's qcow2 must not read this host's files).
 */
export async function assembleDisk(source: string, base: { path: string; fetched: boolean }, deltas: readonly string[], staging: string, target: string): Promise<void> {
  const scratch: string[] = [];
  try {
    let below = base.path;
    if (base.fetched) {
      const copy = join(staging, 'disk-base.qcow2');
      await copyFile(base.path, copy);
      scratch.push(copy);
      await assertStandaloneQcow2(source, copy, 'its disk');
      below = copy;
    }
    if (deltas.length === 0) {
      await copyFile(below, target);
      return;
    }
    for (const [i, delta] of deltas.entries()) {
      const copy = join(staging, `disk-delta-${i}.qcow2`);
      await copyFile(delta, copy);
      scratch.push(copy);
      await assertStandaloneQcow2(source, copy, `its disk delta ${i + 1}`);
      await tool('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', below, copy], `stacking disk delta ${i + 1} failed`);
      below = copy;
    }
    await flattenDisk(below, target, 'the pulled disk');
  } finally {
    for (const f of scratch) await rm(f, { force: true });
  }
}
