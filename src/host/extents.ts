import { execFile } from 'node:child_process';

/**
 * Where files' blocks lie on the device (FIEMAP, read through e2fsprogs' filefrag, which every
 * Debian host has: Node has no ioctl). Files cloned with reflinks share blocks, and their st_blocks
 * each count the shared ones in full: only the physical extents tell what the disk really holds.
 */
export interface Extent {
  /** First byte on the device. */
  start: number;
  length: number;
  /** Another file (or this one, elsewhere) holds the same blocks. */
  shared: boolean;
}

const BATCH = 200;

/** The extents of each file (files filefrag could not read are left out: the caller counts those as st_blocks says). */
export async function fileExtents(paths: readonly string[]): Promise<Map<string, Extent[]>> {
  const found = new Map<string, Extent[]>();
  for (let i = 0; i < paths.length; i += BATCH) {
    const output = await filefrag(paths.slice(i, i + BATCH));
    for (const [path, extents] of parseFilefrag(output)) found.set(path, extents);
  }
  return found;
}

function filefrag(paths: string[]): Promise<string> {
  return new Promise((resolve) => {
    // A file it cannot map makes it exit non-zero after printing the others: use what it printed.
    execFile('filefrag', ['-v', ...paths], { maxBuffer: 256 * 1024 * 1024, timeout: 60_000 }, (_err, stdout) => resolve(stdout ?? ''));
  });
}

const FILE_HEADER = /^File size of (.+) is \d+ \(\d+ blocks? of (\d+) bytes\)$/;
// "  12:   3072..  3199:   81926..   82053:    128:      81929: last,shared,eof"
const EXTENT = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*\d+:\s*(\d+):(.*)$/;

export function parseFilefrag(output: string): Map<string, Extent[]> {
  const files = new Map<string, Extent[]>();
  let current: Extent[] | null = null;
  let blockBytes = 0;
  for (const line of output.split('\n')) {
    const header = FILE_HEADER.exec(line);
    if (header) {
      current = [];
      blockBytes = Number(header[2]);
      files.set(header[1]!, current);
      continue;
    }
    const extent = current && EXTENT.exec(line);
    if (!extent || !current) continue;
    const flags = extent[5]!;
    // Blocks not placed yet (delayed allocation) have no address to share, and a length of 0 in
    // filefrag's column: the file's own, as long as their logical range.
    const placed = !/unknown_loc|delalloc/.test(flags);
    const blocks = placed ? Number(extent[4]) : Number(extent[2]) - Number(extent[1]) + 1;
    current.push({ start: placed ? Number(extent[3]) * blockBytes : -1, length: blocks * blockBytes, shared: placed && /\bshared\b/.test(flags) });
  }
  return files;
}

/** Byte ranges of one device, merged: how many bytes a new set of ranges adds to those seen before. */
export class CoveredRanges {
  private ranges: [number, number][] = [];

  /** Adds `[start, start + length)` ranges and returns how many of their bytes were not covered yet. */
  add(extents: readonly { start: number; length: number }[]): number {
    const before = total(this.ranges);
    const all = [...this.ranges, ...extents.map((e): [number, number] => [e.start, e.start + e.length])].sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [s, e] of all) {
      const last = merged[merged.length - 1];
      if (last && s <= last[1]) last[1] = Math.max(last[1], e);
      else merged.push([s, e]);
    }
    this.ranges = merged;
    return total(merged) - before;
  }
}

const total = (ranges: [number, number][]) => ranges.reduce((n, [s, e]) => n + (e - s), 0);
