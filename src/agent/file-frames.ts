/**
 * Payloads of the guest-agent file frames (docs/protocol.md, "Files"): PUT_FILE, MKDIR, SYMLINK,
 * READ_FILE, LIST_DIR, STAT requests and the stat record of STAT replies and LIST_DIR entries.
 */
import { PayloadReader, PayloadWriter } from './frame.js';

/** Largest FILE_DATA / DATA payload. */
export const FILE_CHUNK = 64 * 1024;

export type GuestEntryKind = 'file' | 'directory' | 'symlink' | 'fifo' | 'socket' | 'char-device' | 'block-device' | 'unknown';

const KINDS: readonly GuestEntryKind[] = ['unknown', 'file', 'directory', 'symlink', 'fifo', 'socket', 'char-device', 'block-device'];

/** What the guest says about one path (lstat, or stat with `follow`). */
export interface GuestStat {
  kind: GuestEntryKind;
  /** Permission bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Milliseconds since the epoch, with the nanoseconds as a fraction (like fs.Stats). */
  mtimeMs: number;
  /** The target of a symlink, else ''. */
  linkTarget: string;
}

export interface GuestDirEntry extends GuestStat {
  /** The name as UTF-8 text (bytes that are not UTF-8 become U+FFFD: check `nameBytes`). */
  name: string;
  nameBytes: Buffer;
}

/** Ownership and mode of an entry created in the guest. */
export interface GuestOwnership {
  /** Permission bits, at most 07777. */
  mode: number;
  uid?: number;
  gid?: number;
}

export interface PutFileMeta extends GuestOwnership {
  /** Modification (and access) time to give the file; absent = the time it is written. */
  mtime?: Date;
}

const MAX_MODE = 0o7777;

function mode(m: number): number {
  if (!Number.isInteger(m) || m < 0 || m > MAX_MODE) throw new RangeError(`mode ${m} is not within 0..0o7777`);
  return m;
}

export function encodePutFile(path: string, meta: PutFileMeta): Buffer {
  const ms = meta.mtime ? BigInt(Math.floor(meta.mtime.getTime())) : 0n;
  // Floor division, so times before 1970 keep a non-negative nanosecond part.
  const sec = ms >= 0n ? ms / 1000n : -((-ms + 999n) / 1000n);
  const nsec = Number(ms - sec * 1000n) * 1_000_000;
  return new PayloadWriter()
    .u32(meta.mtime ? 1 : 0)
    .u32(mode(meta.mode))
    .u32(meta.uid ?? 0)
    .u32(meta.gid ?? 0)
    .i64(sec)
    .u32(nsec)
    .string(path)
    .build();
}

export function encodeFileEnd(size: number): Buffer {
  return new PayloadWriter().u64(BigInt(size)).build();
}

export function encodeMkdir(path: string, own: GuestOwnership): Buffer {
  return new PayloadWriter().u32(mode(own.mode)).u32(own.uid ?? 0).u32(own.gid ?? 0).string(path).build();
}

export function encodeSymlink(path: string, target: string, own: { uid?: number; gid?: number } = {}): Buffer {
  return new PayloadWriter().u32(own.uid ?? 0).u32(own.gid ?? 0).string(path).string(target).build();
}

export function encodeReadFile(path: string, maxBytes = 0): Buffer {
  return new PayloadWriter().u64(BigInt(maxBytes)).string(path).build();
}

export function encodeListDir(path: string): Buffer {
  return new PayloadWriter().string(path).build();
}

export function encodeStat(path: string, follow: boolean): Buffer {
  return new PayloadWriter().u32(follow ? 1 : 0).string(path).build();
}

/** Seconds a guest's mtime may be from the epoch (about 285,000 years): beyond, it is not a time. */
const MAX_MTIME_SECONDS = 2n ** 53n / 1000n;

/** One stat record; the guest's numbers are checked, not trusted (RangeError when they are wrong). */
function readStatRecord(r: PayloadReader): GuestStat {
  const kind = KINDS[r.u8()] ?? 'unknown';
  const m = r.u32();
  const uid = r.u32();
  const gid = r.u32();
  const size = r.u64();
  const sec = r.i64();
  const nsec = r.u32();
  const linkTarget = r.bytes().toString('utf8');
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`size ${size} is too large`);
  if (sec > MAX_MTIME_SECONDS || sec < -MAX_MTIME_SECONDS || nsec >= 1e9) throw new RangeError(`mtime ${sec}.${nsec} is not a time`);
  return { kind, mode: m & MAX_MODE, uid, gid, size: Number(size), mtimeMs: Number(sec) * 1e3 + nsec / 1e6, linkTarget };
}

/** The OK payload of a STAT: one stat record, nothing after it. Throws RangeError when it does not parse. */
export function decodeStat(payload: Buffer): GuestStat {
  const r = new PayloadReader(payload);
  const st = readStatRecord(r);
  if (r.remaining !== 0) throw new RangeError(`${r.remaining} bytes after the stat record`);
  return st;
}

/** One DATA frame of a LIST_DIR: entries back to back. Throws RangeError when it does not parse. */
export function decodeDirEntries(payload: Buffer): GuestDirEntry[] {
  const r = new PayloadReader(payload);
  const entries: GuestDirEntry[] = [];
  while (r.remaining > 0) {
    const nameBytes = Buffer.from(r.bytes());
    entries.push({ name: nameBytes.toString('utf8'), nameBytes, ...readStatRecord(r) });
  }
  return entries;
}
