import type { WriteStream } from 'node:fs';
import { once } from 'node:events';
import type { TarEntryType } from '../unpack/tar-reader.js';

/**
 * Writes tar headers (ustar, plus a pax record when a name, link or size does not fit), for the
 * OCI-layout archives `exportImage` makes. Deterministic: no user names, times as given.
 */
export interface TarWriteEntry {
  path: string;
  type: TarEntryType;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer>;
}

const BLOCK = 512;
const FLAGS: Record<TarEntryType, string> = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
  other: '0',
};
const MAX_OCTAL_SIZE = 0o77777777777;

function writeString(buf: Buffer, text: string, start: number, len: number): void {
  buf.write(text, start, len, 'utf8');
}

function writeOctal(buf: Buffer, value: number, start: number, len: number): void {
  buf.write(`${Math.floor(value).toString(8).padStart(len - 1, '0')}\0`, start, len, 'latin1');
}

function fits(text: string, len: number): boolean {
  return Buffer.byteLength(text) <= len && /^[\x20-\x7e]*$/.test(text);
}

function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.isBuffer(value) ? value : Buffer.from(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function ustarBlock(e: TarWriteEntry, flag: string, name: string, linkpath: string, size: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  writeString(b, name, 0, 100);
  writeOctal(b, e.mode ?? (e.type === 'dir' ? 0o755 : 0o644), 100, 8);
  writeOctal(b, e.uid ?? 0, 108, 8);
  writeOctal(b, e.gid ?? 0, 116, 8);
  writeOctal(b, size, 124, 12);
  writeOctal(b, e.mtime ?? 0, 136, 12);
  b.fill(0x20, 148, 156);
  b.write(flag, 156, 1, 'latin1');
  writeString(b, linkpath, 157, 100);
  b.write('ustar\x0000', 257, 8, 'latin1');
  writeOctal(b, e.devmajor ?? 0, 329, 8);
  writeOctal(b, e.devminor ?? 0, 337, 8);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** The header block(s) for one entry; its contents (if a file) follow, then `padding(size)`. */
export function tarHeader(e: TarWriteEntry): Buffer {
  const size = e.type === 'file' ? (e.size ?? 0) : 0;
  const records: Buffer[] = [];
  if (!fits(e.path, 100)) records.push(paxRecord('path', e.path));
  if (e.linkpath && !fits(e.linkpath, 100)) records.push(paxRecord('linkpath', e.linkpath));
  if (size > MAX_OCTAL_SIZE) records.push(paxRecord('size', String(size)));
  for (const [key, value] of e.xattrs ?? []) records.push(paxRecord(`SCHILY.xattr.${key}`, value));
  const main = ustarBlock(e, FLAGS[e.type], fits(e.path, 100) ? e.path : e.path.slice(0, 99), fits(e.linkpath ?? '', 100) ? (e.linkpath ?? '') : '', size > MAX_OCTAL_SIZE ? 0 : size);
  if (records.length === 0) return main;
  const data = Buffer.concat(records);
  const paxHeader = ustarBlock({ path: 'PaxHeader', type: 'file', mode: 0o644 }, 'x', 'PaxHeader', '', data.length);
  return Buffer.concat([paxHeader, data, padding(data.length), main]);
}

export { padding as tarPadding };

/** Two zero blocks end an archive. */
export const TAR_END = Buffer.alloc(BLOCK * 2);

/** Writes to a file stream, honouring back-pressure. */
export async function writeAll(out: WriteStream, data: Buffer): Promise<void> {
  if (!out.write(data)) await once(out, 'drain');
}
