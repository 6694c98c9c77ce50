/**
 * Archives no honest tool writes, for import tests: millions of empty files (gzip'd: the tar is
 * 1.5 GB, the file tens of MiB, written as a stream in seconds), and a member whose header claims
 * far more bytes than the archive holds.
 */
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { createGzip, constants } from 'node:zlib';
import { tarHeader, TAR_END } from '../../src/image/archive/tar-writer.js';

const BLOCK = 512;
const BATCH = 8192;

/** A gzip'd tar of `count` empty files `f/0000000`, `f/0000001`, ...: headers from one template. */
export async function manyEntriesTar(file: string, count: number): Promise<void> {
  const template = tarHeader({ path: 'f/0000000', type: 'file', size: 0 });
  let base = 0;
  for (let i = 0; i < BLOCK; i++) base += i >= 148 && i < 156 ? 0x20 : template[i]!;
  base -= 7 * 0x30; // the digits of the name, added back per entry
  const gzip = createGzip({ level: constants.Z_BEST_SPEED });
  const out = createWriteStream(file);
  gzip.pipe(out);
  for (let done = 0; done < count; ) {
    const n = Math.min(BATCH, count - done);
    const batch = Buffer.allocUnsafe(n * BLOCK);
    for (let k = 0; k < n; k++, done++) {
      const at = k * BLOCK;
      template.copy(batch, at);
      const digits = String(done).padStart(7, '0');
      let sum = base;
      for (let d = 0; d < 7; d++) {
        const c = digits.charCodeAt(d);
        batch[at + 2 + d] = c;
        sum += c;
      }
      batch.write(`${sum.toString(8).padStart(6, '0')}\0 `, at + 148, 8, 'latin1');
    }
    if (!gzip.write(batch)) await once(gzip, 'drain');
  }
  gzip.end(TAR_END);
  await once(out, 'close');
}

/** A tar whose member `name` claims `size` bytes and holds a few; `before` members come first, whole. */
export async function claimingTar(file: string, name: string, size: number, before: { name: string; data: Buffer }[] = []): Promise<void> {
  const out = createWriteStream(file);
  for (const m of before) {
    out.write(tarHeader({ path: m.name, type: 'file', size: m.data.length }));
    out.write(m.data);
    out.write(Buffer.alloc((BLOCK - (m.data.length % BLOCK)) % BLOCK));
  }
  out.write(tarHeader({ path: name, type: 'file', size }));
  out.end(Buffer.alloc(BLOCK, 0x41));
  await once(out, 'close');
}

/** A tar of `count` pax records in a row (each setting a new key) before one empty file. */
export async function paxFloodTar(file: string, count: number): Promise<void> {
  const out = createWriteStream(file);
  for (let i = 0; i < count; i++) {
    const record = Buffer.from(`28 comment=${String(i).padStart(16, '0')}\n`);
    const header = tarHeader({ path: 'PaxHeader', type: 'file', size: record.length });
    header.write('x', 156, 1, 'latin1');
    header.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of header) sum += b;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
    out.write(header);
    out.write(record);
    out.write(Buffer.alloc(BLOCK - record.length));
  }
  out.write(tarHeader({ path: 'after', type: 'file', size: 0 }));
  out.end(TAR_END);
  await once(out, 'close');
}
