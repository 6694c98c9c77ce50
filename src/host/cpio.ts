/**
 * A writer for cpio "newc" archives (the format the Linux kernel unpacks as an initramfs).
 * Output is deterministic: mtime 0, uid/gid 0, inode numbers assigned in insertion order, so the
 * same entries always give the same bytes (and the same digest).
 *
 * Entry layout: the 6-byte magic "070701", 13 fields of 8 upper-case hex digits (ino, mode, uid,
 * gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the
 * name with its NUL padded so the data starts at a multiple of 4, then the data padded to 4.
 * The archive ends with an entry named "TRAILER!!!".
 */

const MAGIC = '070701';
const TRAILER = 'TRAILER!!!';
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

interface Entry {
  name: string;
  mode: number;
  nlink: number;
  data: Buffer;
  rdevMajor: number;
  rdevMinor: number;
}

export class CpioWriter {
  private readonly entries: Entry[] = [];
  private readonly names = new Set<string>();

  /** A directory; missing parents of any entry are added as 0755 directories automatically. */
  dir(path: string, mode = 0o755): this {
    return this.add(path, S_IFDIR | (mode & 0o7777), 2, Buffer.alloc(0));
  }

  file(path: string, data: Buffer | string, mode = 0o644): this {
    return this.add(path, S_IFREG | (mode & 0o7777), 1, typeof data === 'string' ? Buffer.from(data) : data);
  }

  symlink(path: string, target: string): this {
    return this.add(path, S_IFLNK | 0o777, 1, Buffer.from(target));
  }

  /** A character device node, e.g. /dev/console = (5, 1): PID 1's stdio before devtmpfs is mounted. */
  charDevice(path: string, major: number, minor: number, mode = 0o600): this {
    return this.add(path, S_IFCHR | (mode & 0o7777), 1, Buffer.alloc(0), major, minor);
  }

  has(path: string): boolean {
    return this.names.has(normalize(path));
  }

  toBuffer(): Buffer {
    const parts: Buffer[] = [];
    this.entries.forEach((e, i) => pushEntry(parts, e, i + 1));
    pushEntry(parts, { name: TRAILER, mode: 0, nlink: 1, data: Buffer.alloc(0), rdevMajor: 0, rdevMinor: 0 }, 0);
    return Buffer.concat(parts);
  }

  private add(path: string, mode: number, nlink: number, data: Buffer, rdevMajor = 0, rdevMinor = 0): this {
    const name = normalize(path);
    if (this.names.has(name)) throw new Error(`cpio: duplicate entry ${name}`);
    // The kernel's unpacker does not create missing parents, so every parent comes first.
    const slash = name.lastIndexOf('/');
    if (slash > 0 && !this.names.has(name.slice(0, slash))) this.dir(name.slice(0, slash));
    this.names.add(name);
    this.entries.push({ name, mode, nlink, data, rdevMajor, rdevMinor });
    return this;
  }
}

function normalize(path: string): string {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.includes('..')) throw new Error(`cpio: bad entry name "${path}"`);
  return parts.join('/');
}

function pushEntry(parts: Buffer[], e: Entry, ino: number): void {
  const name = Buffer.from(`${e.name}\0`);
  const fields = [ino, e.mode, 0, 0, e.nlink, 0, e.data.length, 0, 0, e.rdevMajor, e.rdevMinor, name.length, 0];
  const header = MAGIC + fields.map((f) => f.toString(16).toUpperCase().padStart(8, '0')).join('');
  parts.push(Buffer.from(header, 'ascii'), name, padding(header.length + name.length));
  if (e.data.length > 0) parts.push(e.data, padding(e.data.length));
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
