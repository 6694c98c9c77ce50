import { CellError, ErrorCodes } from '../../domain/errors.js';
import { ByteSource } from './byte-source.js';

/**
 * A streaming tar reader for ustar, POSIX pax and GNU long-name archives: what image layers and
 * docker-save/OCI-layout archives use. Written here (rather than taken from a package) so that
 * every field the unpacker trusts is parsed in one place we control, and bodies stream with
 * back-pressure into whatever the caller awaits.
 */
export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo' | 'other';

export interface TarHeader {
  path: string;
  type: TarEntryType;
  /** The raw type flag, for messages about entries of type `other`. */
  typeflag: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch (pax allows fractions). */
  mtime: number;
  linkpath: string;
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
  /**
   * A GNU sparse file (old GNU format, type 'S', as `tar --sparse` writes), read only with
   * `gnuSparse`: `size` is then the data stored in the archive, not the file's. `realSize` is
   * the file's length, `allocatedBytes` what its data takes in 4 KiB blocks once written out.
   */
  sparse?: { realSize: number; allocatedBytes: number };
}

export interface ReadTarOptions {
  /** Yield GNU sparse files (with `header.sparse`) instead of refusing them. Their bodies are the stored data only. */
  gnuSparse?: boolean;
}

export interface TarEntry {
  header: TarHeader;
  /** The entry's contents; if not read, they are skipped when the next entry is asked for. */
  body(): AsyncGenerator<Buffer>;
}

const BLOCK = 512;
/** pax and GNU long-name records are metadata: anything this big is hostile. */
const MAX_META_BYTES = 1024 * 1024;
/** Metadata records before one entry: a few in a real archive; a stream of them is an entry cap dodged. */
const MAX_META_RECORDS = 32;
/** File system block size for sparse files' allocation (ext4 and tmpfs). */
const FS_BLOCK = 4096;
/** The largest uid or gid (32-bit, without the -1 that chown reads as "leave it"). */
const MAX_ID = 0xfffffffe;
/** The latest mtime accepted (seconds; year 5138): later is not a time a layer means. */
const MAX_MTIME = 1e11;

function bad(what: string, why: string): CellError {
  return new CellError(ErrorCodes.UNSAFE_ARCHIVE, `${what}: ${why}`);
}

function cString(buf: Buffer, start: number, len: number): string {
  const field = buf.subarray(start, start + len);
  const nul = field.indexOf(0);
  return field.subarray(0, nul === -1 ? len : nul).toString('utf8');
}

/** Octal ASCII, or GNU base-256 when the high bit of the first byte is set. */
function parseNumber(buf: Buffer, start: number, len: number, what: string): number {
  const end = start + len;
  if (buf[start]! & 0x80) {
    if (buf[start] === 0xff) throw bad(what, 'a negative number in a tar header');
    let value = buf[start]! & 0x7f;
    for (let i = start + 1; i < end; i++) {
      value = value * 256 + buf[i]!;
      if (!Number.isSafeInteger(value)) throw bad(what, 'a number too large in a tar header');
    }
    return value;
  }
  // Fast path (seven numbers per header): optional spaces, octal digits, then spaces up to a NUL
  // or the end of the field. Anything else takes the strict path, which also words the error.
  let i = start;
  while (i < end && buf[i] === 0x20) i++;
  let value = 0;
  for (; i < end; i++) {
    const b = buf[i]!;
    if (b < 0x30 || b > 0x37) break;
    value = value * 8 + (b - 0x30);
  }
  while (i < end && buf[i] === 0x20) i++;
  if (i === end || buf[i] === 0) return value;
  return parseNumberStrict(buf, start, len, what);
}

function parseNumberStrict(buf: Buffer, start: number, len: number, what: string): number {
  const text = buf.subarray(start, start + len).toString('latin1').replace(/[\0 ]+$/g, '').replace(/^[ ]+/, '').split('\0')[0]!.trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw bad(what, `an invalid number "${text.slice(0, 20)}" in a tar header`);
  return parseInt(text, 8);
}

function checksumOk(block: Buffer, what: string): boolean {
  let stored: number;
  try {
    stored = parseNumber(block, 148, 8, what);
  } catch {
    return false;
  }
  // The checksum field counts as spaces; old tars summed signed bytes.
  let unsigned = 8 * 0x20;
  let high = 0;
  for (let i = 0; i < BLOCK; i++) {
    if (i === 148) i = 156;
    const b = block[i]!;
    unsigned += b;
    if (b > 127) high++;
  }
  return stored === unsigned || stored === unsigned - 256 * high;
}

function typeOf(flag: string, name: string): TarEntryType {
  switch (flag) {
    case '0':
    case '\0':
    case '':
    case '7':
      return name.endsWith('/') ? 'dir' : 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
      return 'char';
    case '4':
      return 'block';
    case '5':
      return 'dir';
    case '6':
      return 'fifo';
    default:
      return 'other';
  }
}

/** pax extended header records: "<len> <key>=<value>\n", len counting the whole record. */
function parsePax(data: Buffer, what: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break;
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw bad(what, 'a malformed pax record');
    const len = Number(data.subarray(pos, space).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= space - pos || pos + len > data.length) throw bad(what, 'a malformed pax record length');
    const record = data.subarray(space + 1, pos + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq === -1) throw bad(what, 'a pax record without "="');
    out.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    pos += len;
  }
  return out;
}

function applyPax(h: TarHeader, pax: Map<string, Buffer>, what: string): void {
  for (const [key, value] of pax) {
    const text = value.toString('utf8');
    const num = (): number => {
      const n = Number(text);
      if (!Number.isFinite(n) || n < 0) throw bad(what, `pax ${key}=${text.slice(0, 30)} is not a valid number`);
      return n;
    };
    if (key === 'path') h.path = text;
    else if (key === 'linkpath') h.linkpath = text;
    else if (key === 'size') h.size = num();
    else if (key === 'uid') h.uid = num();
    else if (key === 'gid') h.gid = num();
    else if (key === 'mtime') h.mtime = num();
    else if (key.startsWith('SCHILY.xattr.')) h.xattrs.set(key.slice('SCHILY.xattr.'.length), value);
    else if (key.startsWith('LIBARCHIVE.xattr.')) {
      let name: string;
      try {
        name = decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length));
      } catch {
        throw bad(what, `a malformed pax xattr name ${key.slice(0, 60)}`);
      }
      h.xattrs.set(name, Buffer.from(text, 'base64'));
    } else if (key.startsWith('GNU.sparse.')) throw bad(what, `sparse file ${h.path || '(unnamed)'} is not supported`);
  }
  if (!Number.isSafeInteger(h.size)) throw bad(what, `entry ${h.path} has an invalid size`);
  // Owners are 32-bit ids (0xffffffff means "no change" to chown: not an owner either).
  for (const [name, id] of [['uid', h.uid], ['gid', h.gid]] as const) {
    if (!Number.isInteger(id) || id < 0 || id > MAX_ID) throw bad(what, `entry ${h.path} has an invalid ${name} ${id}`);
  }
  if (!(h.mtime >= 0 && h.mtime <= MAX_MTIME)) throw bad(what, `entry ${h.path} has an invalid mtime ${h.mtime}`);
}

/**
 * Yields the entries of a tar stream in order. The caller must finish with one entry (or leave
 * its body unread) before asking for the next. Ends at the end-of-archive blocks or the stream's end.
 */
export async function* readTar(source: ByteSource, what: string, opts: ReadTarOptions = {}): AsyncGenerator<TarEntry> {
  let globalPax = new Map<string, Buffer>();
  let pax: Map<string, Buffer> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  let metaRecords = 0;

  for (;;) {
    const block = await source.readExact(BLOCK);
    if (!block) return;
    if (block.every((b) => b === 0)) return;
    if (!checksumOk(block, what)) throw bad(what, 'not a tar archive (header checksum mismatch)');

    const magic = block.subarray(257, 263).toString('latin1');
    const flag = String.fromCharCode(block[156]!);
    let name = cString(block, 0, 100);
    if (magic === 'ustar\0') {
      const prefix = cString(block, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const size = parseNumber(block, 124, 12, what);

    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      if (size > MAX_META_BYTES) throw bad(what, `a ${flag} metadata record of ${size} bytes`);
      if (++metaRecords > MAX_META_RECORDS) throw bad(what, `more than ${MAX_META_RECORDS} metadata records before one entry`);
      const data = (await source.readExact(Math.ceil(size / BLOCK) * BLOCK))?.subarray(0, size);
      if (!data) throw bad(what, 'the archive ends inside a metadata record');
      if (flag === 'x') pax = new Map([...(pax ?? []), ...parsePax(data, what)]);
      else if (flag === 'g') globalPax = new Map([...globalPax, ...parsePax(data, what)]);
      else if (flag === 'L') longName = cString(data, 0, data.length);
      else longLink = cString(data, 0, data.length);
      continue;
    }
    metaRecords = 0;
    let sparse: TarHeader['sparse'];
    if (flag === 'S') {
      if (!opts.gnuSparse) throw bad(what, `GNU sparse file ${longName ?? name} is not supported`);
      sparse = await readSparseMap(block, source, what);
    }

    const header: TarHeader = {
      path: longName ?? name,
      type: 'file',
      typeflag: flag,
      size,
      mode: parseNumber(block, 100, 8, what) & 0o7777,
      uid: parseNumber(block, 108, 8, what),
      gid: parseNumber(block, 116, 8, what),
      mtime: parseNumber(block, 136, 12, what),
      linkpath: longLink ?? cString(block, 157, 100),
      devmajor: magic.startsWith('ustar') ? parseNumber(block, 329, 8, what) : 0,
      devminor: magic.startsWith('ustar') ? parseNumber(block, 337, 8, what) : 0,
      xattrs: new Map(),
      ...(sparse ? { sparse } : {}),
    };
    applyPax(header, new Map([...globalPax, ...(pax ?? [])]), what);
    header.type = sparse ? 'file' : typeOf(flag, header.path);
    // Only regular files (and unknown types) have contents. A hard link may carry data blocks
    // (pax allows it), which are skipped; dirs, symlinks and devices never do (as libarchive reads them).
    const bodySize = header.type === 'file' || header.type === 'other' ? header.size : 0;
    const dataBytes = header.type === 'hardlink' ? Math.ceil(header.size / BLOCK) * BLOCK : Math.ceil(bodySize / BLOCK) * BLOCK;
    if (header.type !== 'file' && header.type !== 'other') header.size = 0;
    pax = undefined;
    longName = undefined;
    longLink = undefined;

    let read = 0;
    const body = async function* (): AsyncGenerator<Buffer> {
      for await (const chunk of source.chunks(bodySize - read)) {
        read += chunk.length;
        yield chunk;
      }
    };
    yield { header, body };
    if (read < bodySize) await source.skip(bodySize - read);
    if (dataBytes > bodySize) await source.skip(dataBytes - bodySize);
  }
}

/**
 * An old-GNU sparse header's map: four (offset, length) pairs in the header, then extension
 * blocks of 21 while the "extended" flag is set. Only sums are kept (a map may be long): the
 * file's real size and the 4 KiB blocks its data segments touch.
 */
async function readSparseMap(header: Buffer, source: ByteSource, what: string): Promise<{ realSize: number; allocatedBytes: number }> {
  const realSize = parseNumber(header, 483, 12, what);
  let blocks = 0;
  const add = (buf: Buffer, at: number, count: number): void => {
    for (let i = 0; i < count; i++) {
      const o = at + i * 24;
      if (buf[o] === 0) return;
      const offset = parseNumber(buf, o, 12, what);
      const length = parseNumber(buf, o + 12, 12, what);
      if (offset + length > realSize) throw bad(what, 'a sparse map reaching past the end of its file');
      if (length > 0) blocks += Math.floor((offset + length - 1) / FS_BLOCK) - Math.floor(offset / FS_BLOCK) + 1;
    }
  };
  add(header, 386, 4);
  for (let extended = header[482] !== 0; extended; ) {
    const ext = await source.readExact(BLOCK);
    if (!ext) throw bad(what, 'the archive ends inside a sparse map');
    add(ext, 0, 21);
    extended = ext[504] !== 0;
  }
  return { realSize, allocatedBytes: Math.min(blocks * FS_BLOCK, Math.ceil(realSize / FS_BLOCK) * FS_BLOCK) };
}
