import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { canClone } from '../host/clone-file.js';
import { CoveredRanges, fileExtents, type Extent } from '../host/extents.js';
import type { EngineContext } from './context.js';
import { ramClonesEnabled } from './snapshot-memory.js';

/**
 * `cell system df`, as `docker system df`: what celld's home holds, by kind, as logical bytes
 * (file sizes: a sparse RAM file counts whole) and really used ones (allocated blocks). Each file
 * is counted once even where it is linked twice, and only by the first kind that reaches it; on a
 * file system with reflinks, each block too (snapshots share their parents' RAM pages there).
 */
export interface UsageRow {
  count: number;
  logicalBytes: number;
  usedBytes: number;
}

export interface DiskUsage {
  /** Layer blobs and the base disks built from them. */
  images: UsageRow;
  /** Snapshots users see; `retired`: removed ones kept for the snapshots that stand on them. */
  snapshots: UsageRow & { retired: number };
  /** VMs' own overlay disks and logs (their RAM files are in memory, on /dev/shm: not here). */
  vms: UsageRow;
  volumes: UsageRow;
  /** Action cache entries, with what their snapshots hold (counted under snapshots too, not in the total). */
  buildCache: UsageRow;
  total: { logicalBytes: number; usedBytes: number };
  /** How snapshots' RAM is stored in this home: `shared` (clones of the parent's, by what changed) or `whole`, and why. */
  snapshotRam: { mode: 'shared' | 'whole'; reason: string };
}

class Tally {
  private readonly seen = new Set<string>();
  private readonly covered = new Map<number, CoveredRanges>();

  /** `reflinks`: the home's file system shares blocks between cloned files (counted once, by their extents). */
  constructor(private readonly reflinks = false) {}

  /** Sizes of every regular file under `path` (or of `path` itself) not counted before. */
  async measure(path: string): Promise<Sizes> {
    const files: { path: string; dev: number; blocks: number }[] = [];
    let logical = 0;
    const walk = async (p: string): Promise<void> => {
      const s = await lstat(p).catch(() => undefined);
      if (!s) return;
      if (s.isDirectory()) {
        for (const name of await readdir(p).catch(() => [] as string[])) await walk(join(p, name));
        return;
      }
      if (!s.isFile()) return;
      const key = `${s.dev}:${s.ino}`;
      if (this.seen.has(key)) return;
      this.seen.add(key);
      logical += s.size;
      files.push({ path: p, dev: s.dev, blocks: s.blocks });
    };
    await walk(path);
    const extents = this.reflinks ? await fileExtents(files.filter((f) => f.blocks > 0).map((f) => f.path)) : new Map<string, Extent[]>();
    let used = 0;
    for (const file of files) {
      const mine = extents.get(file.path);
      if (!mine) {
        used += file.blocks * 512;
        continue;
      }
      // A block shared with another file counts where it is first met.
      used += mine.filter((e) => !e.shared).reduce((n, e) => n + e.length, 0);
      let covered = this.covered.get(file.dev);
      if (!covered) this.covered.set(file.dev, (covered = new CoveredRanges()));
      used += covered.add(mine.filter((e) => e.shared));
    }
    return { logical, used };
  }

  /** The sum of `measure` over `paths`. */
  async measureAll(paths: Iterable<string>): Promise<Sizes> {
    const sum = { logical: 0, used: 0 };
    for (const path of paths) {
      const m = await this.measure(path);
      sum.logical += m.logical;
      sum.used += m.used;
    }
    return sum;
  }
}

interface Sizes {
  logical: number;
  used: number;
}

const row = (count: number, m: Sizes): UsageRow => ({ count, logicalBytes: m.logical, usedBytes: m.used });

function ramMode(reflinks: boolean): DiskUsage['snapshotRam'] {
  if (!ramClonesEnabled()) return { mode: 'whole', reason: 'CELL_RAM_CLONES=0 on celld' };
  if (!reflinks) return { mode: 'whole', reason: "the home's file system has no reflinks; a home on XFS or btrfs stores what each snapshot changed" };
  return { mode: 'shared', reason: "the home's file system has reflinks: a snapshot's RAM shares its parent's unchanged pages" };
}

export async function diskUsage(ctx: Pick<EngineContext, 'paths' | 'stores' | 'db'>): Promise<DiskUsage> {
  const { paths, stores } = ctx;
  const reflinks = await canClone(paths.home);
  const tally = new Tally(reflinks);
  const all = ctx.db.prepare('SELECT id, retired_at FROM snapshots').all() as { id: string; retired_at: string | null }[];
  const retired = all.filter((s) => s.retired_at).length;
  const snap = await tally.measureAll(all.map((s) => paths.snapshotDir(s.id)));
  const images = await tally.measureAll([join(paths.home, 'blobs'), paths.images]);
  const vms = await tally.measure(paths.vms);
  const volumes = await tally.measure(paths.volumes);
  // What the cache entries' snapshots hold (already counted above: shown, not added to the total).
  const entries = stores.actionCache.list();
  const cached = await new Tally(reflinks).measureAll(new Set(entries.map((e) => paths.snapshotDir(e.snapshotId))));
  const usage: Omit<DiskUsage, 'total' | 'snapshotRam'> = {
    images: row(stores.images.list().length, images),
    snapshots: { ...row(all.length - retired, snap), retired },
    vms: row(stores.vms.list().length, vms),
    volumes: row(stores.volumes.list().length, volumes),
    buildCache: row(entries.length, cached),
  };
  const parts = [usage.images, usage.snapshots, usage.vms, usage.volumes];
  return { ...usage, snapshotRam: ramMode(reflinks), total: { logicalBytes: parts.reduce((n, p) => n + p.logicalBytes, 0), usedBytes: parts.reduce((n, p) => n + p.usedBytes, 0) } };
}
