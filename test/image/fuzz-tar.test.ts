/**
 * Fuzz-style: the tar reader and the layer unpacker (src/image/unpack) on hostile archives. The
 * archives are built header by header (pax and GNU long-name records, base-256 numbers, every
 * type flag, names with `..`, absolute and climbing symlinks, hard links out of the tree), then
 * optionally mutated byte by byte with the header checksum fixed up so the damage reaches the
 * parser. Whatever the bytes: a failure is a CellError with a code, and nothing is ever written
 * outside the unpack root.
 *
 * A few hundred cases in the suite; FUZZ_RUNS=N for longer runs (scripts/fuzz.sh).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import { ByteSource } from '../../src/image/unpack/byte-source.js';
import { readTar } from '../../src/image/unpack/tar-reader.js';
import { applyLayer, newUnpackState } from '../../src/image/unpack/apply-layer.js';
import { fuzzParams } from '../agent/fuzz-runs.js';

const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));
let work: string;
let outside: string;

before(() => {
  work = mkdtempSync('/tmp/cellt-fuzz-tar-');
  outside = join(work, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'sentinel'), 'untouched');
});
after(() => rmSync(work, { recursive: true, force: true }));

// ---- a tar writer that writes whatever it is told ----

const BLOCK = 512;

function field(b: Buffer, value: Buffer | string, start: number, len: number): void {
  const v = Buffer.isBuffer(value) ? value : Buffer.from(value, 'latin1');
  v.copy(b, start, 0, Math.min(len, v.length));
}

function setChecksum(block: Buffer): void {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
}

interface RawEntry {
  name: string;
  flag: string;
  link: string;
  body: Buffer;
  /** The size field as written: octal of the body's length, or anything else. */
  size: Buffer | string | null;
  mode: Buffer | string;
  uid: Buffer | string;
  mtime: Buffer | string;
  pax: [string, string][];
  longName: string | null;
}

function header(name: string, flag: string, link: string, size: Buffer | string, e: Pick<RawEntry, 'mode' | 'uid' | 'mtime'>): Buffer {
  const b = Buffer.alloc(BLOCK);
  field(b, Buffer.from(name, 'utf8'), 0, 100);
  field(b, e.mode, 100, 8);
  field(b, e.uid, 108, 8);
  field(b, e.uid, 116, 8);
  field(b, size, 124, 12);
  field(b, e.mtime, 136, 12);
  b.write(flag, 156, 1, 'latin1');
  field(b, Buffer.from(link, 'utf8'), 157, 100);
  b.write('ustar\x0000', 257, 8, 'latin1');
  setChecksum(b);
  return b;
}

const octal = (n: number, len: number) => `${n.toString(8).padStart(len - 1, '0')}\0`;
const pad = (n: number) => Buffer.alloc((BLOCK - (n % BLOCK)) % BLOCK);

function paxBody(records: [string, string][]): Buffer {
  return Buffer.concat(
    records.map(([k, v]) => {
      const body = ` ${k}=${v}\n`;
      let len = Buffer.byteLength(body) + 1;
      while (String(len).length + Buffer.byteLength(body) !== len) len = String(len).length + Buffer.byteLength(body);
      return Buffer.from(`${len}${body}`);
    }),
  );
}

function serialize(entries: RawEntry[]): Buffer {
  const parts: Buffer[] = [];
  const meta = { mode: octal(0o644, 8), uid: octal(0, 8), mtime: octal(1_700_000_000, 12) };
  for (const e of entries) {
    if (e.pax.length > 0) {
      const body = paxBody(e.pax);
      parts.push(header('PaxHeaders/x', 'x', '', octal(body.length, 12), meta), body, pad(body.length));
    }
    if (e.longName !== null) {
      const body = Buffer.from(`${e.longName}\0`);
      parts.push(header('././@LongLink', 'L', '', octal(body.length, 12), meta), body, pad(body.length));
    }
    // Only regular files (and hard links, which may) carry data; a body elsewhere is read as the
    // next header, which the byte mutations already cover.
    const body = ['0', '7', '\0', '1', 'Z'].includes(e.flag) ? e.body : Buffer.alloc(0);
    parts.push(header(e.name, e.flag, e.link, e.size ?? octal(body.length, 12), e), body, pad(body.length));
  }
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

/** Byte mutations; with `fix`, every header block touched gets a correct checksum again. */
function mutate(tar: Buffer, edits: { at: number; value: number }[], cut: number | null, fix: boolean): Buffer {
  const out = Buffer.from(tar);
  const touched = new Set<number>();
  for (const { at, value } of edits) {
    const i = at % out.length;
    out[i] = value;
    touched.add(Math.floor(i / BLOCK));
  }
  if (fix) {
    for (const blk of touched) {
      const b = out.subarray(blk * BLOCK, blk * BLOCK + BLOCK);
      // Only blocks that look like headers (ustar magic) are fixed up.
      if (b.length === BLOCK && b.toString('latin1', 257, 262) === 'ustar') setChecksum(b);
    }
  }
  return cut === null ? out : out.subarray(0, cut % (out.length + 1));
}

// ---- generators ----

let outsideAbs = '/tmp/cellt-fuzz-tar-outside';
const segment = fc.oneof(
  { weight: 12, arbitrary: fc.constantFrom('a', 'b', 'evil', 'dir', 'f\u00e9', 'sentinel', '.', '', 'x'.repeat(120), '.wh.a', '.wh..wh..opq') },
  { weight: 1, arbitrary: fc.constantFrom('..', 'y'.repeat(300)) },
);
const pathArb = fc.array(segment, { minLength: 1, maxLength: 4 }).chain((parts) => fc.constantFrom(parts.join('/'), `/${parts.join('/')}`, `${parts.join('/')}/`));
const linkArb = fc.oneof(
  pathArb,
  fc.constant('LINK_OUTSIDE_ABS'),
  fc.constantFrom('../outside', '../../outside', '..', '/', '/etc', '../outside/sentinel', 'evil/../../outside'),
);
/** A numeric header field: mostly valid octal, sometimes GNU base-256, sometimes junk. */
const numberField = (len: number, max: number) =>
  fc.oneof(
    { weight: 60, arbitrary: fc.nat({ max }).map((n) => octal(n, len)) },
    {
      weight: 2,
      arbitrary: fc.tuple(fc.nat({ max: 0xffff }), fc.nat({ max: 5 })).map(([n, huge]) => {
        const b = Buffer.alloc(len);
        b[0] = 0x80; // GNU base-256
        b.writeUInt16BE(n, len - 2);
        if (huge === 0) b[1] = 0x7f;
        return b;
      }),
    },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: len, maxLength: len }).map((a) => Buffer.from(a)) },
    { weight: 1, arbitrary: fc.constantFrom(' 777 \0', '-1', '8888', '', '\0'.repeat(len), '7'.repeat(len)) },
  );
const paxArb = fc.array(
  fc.tuple(
    fc.constantFrom('path', 'linkpath', 'size', 'uid', 'gid', 'mtime', 'SCHILY.xattr.user.x', 'SCHILY.xattr.security.capability', 'LIBARCHIVE.xattr.user.%41', 'LIBARCHIVE.xattr.%zz', 'GNU.sparse.size', 'comment'),
    fc.oneof(fc.constantFrom('0', '1', '-1', '1.5', '1e400', '99999999999999999999', '4294967296', 'NaN', '', '../outside', 'LINK_OUTSIDE_ABS'), pathArb, fc.string({ maxLength: 10 })),
  ),
  { maxLength: 2 },
);
/** `arb` once in `n` cases, else null. */
const rarely = <T>(arb: fc.Arbitrary<T>, n: number) => fc.oneof({ weight: n - 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: arb });
const entryArb: fc.Arbitrary<RawEntry> = fc.record({
  name: pathArb,
  flag: fc.oneof({ weight: 6, arbitrary: fc.constantFrom('0', '5', '2', '1', '0', '5') }, { weight: 1, arbitrary: fc.constantFrom('3', '4', '6', '7', '\0', 'x', 'g', 'L', 'K', 'S', 'Z') }),
  link: linkArb,
  body: fc.uint8Array({ maxLength: 700 }).map((a) => Buffer.from(a)),
  size: rarely(numberField(12, 2000), 10),
  mode: numberField(8, 0o7777),
  uid: numberField(8, 70000),
  mtime: numberField(12, 2_000_000_000),
  pax: fc.oneof({ weight: 3, arbitrary: fc.constant([] as [string, string][]) }, { weight: 1, arbitrary: paxArb }),
  longName: rarely(pathArb, 5),
});
const archiveArb = fc.record({
  entries: fc.array(entryArb, { minLength: 1, maxLength: 8 }),
  edits: fc.oneof(fc.constant([] as { at: number; value: number }[]), fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { maxLength: 4 })),
  cut: rarely(fc.nat(), 10),
  fix: fc.boolean(),
});

function build(a: { entries: RawEntry[]; edits: { at: number; value: number }[]; cut: number | null; fix: boolean }): Buffer {
  const fill = (s: string) => s.replace('LINK_OUTSIDE_ABS', outsideAbs);
  const entries = a.entries.map((e) => ({ ...e, link: fill(e.link), pax: e.pax.map(([k, v]) => [k, fill(v)] as [string, string]) }));
  return mutate(serialize(entries), a.edits, a.cut, a.fix);
}

function assertCellError(err: unknown): void {
  assert.ok(err instanceof CellError, `not a CellError: ${(err as Error)?.stack ?? String(err)}`);
  assert.ok(CODES.has(err.code));
}

/** Everything under `dir`: path, kind, size and (for files) contents. */
function snapshot(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .map((e) => {
      const p = join(e.parentPath, e.name);
      const st = lstatSync(p);
      return `${p} ${st.mode} ${st.size} ${st.isFile() ? readFileSync(p, 'latin1') : ''}`;
    })
    .sort();
}

async function* chunks(buf: Buffer): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += 777) yield buf.subarray(i, i + 777);
}

test('the tar reader on hostile archives: entries with sane fields, or a CellError', async () => {
  await fc.assert(
    fc.asyncProperty(archiveArb, async (a) => {
      const tar = build(a);
      try {
        for await (const entry of readTar(new ByteSource(chunks(tar), 'fuzz'), 'fuzz')) {
          const h = entry.header;
          assert.ok(Number.isSafeInteger(h.size) && h.size >= 0, `size ${h.size}`);
          assert.equal(typeof h.path, 'string');
          let n = 0;
          if ((h.path.length & 1) === 0) for await (const c of entry.body()) n += c.length;
          if ((h.path.length & 1) === 0) assert.equal(n, h.size);
        }
      } catch (err) {
        assertCellError(err);
      }
    }),
    fuzzParams(400),
  );
});

test('the layer unpacker on hostile archives: a CellError with a code, and nothing written outside the root', async () => {
  outsideAbs = outside;
  const before = snapshot(outside);
  await fc.assert(
    fc.asyncProperty(archiveArb, async (a) => {
      const tar = build(a);
      const root = mkdtempSync(join(work, 'root-'));
      try {
        const state = newUnpackState(root, { maxEntries: 1000, maxBytes: 16 * 1024 * 1024 });
        await applyLayer(chunks(tar), state, 'fuzzed layer');
      } catch (err) {
        assertCellError(err);
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
      assert.deepEqual(snapshot(outside), before, 'something was written outside the unpack root');
      assert.deepEqual(readdirSync(work).sort(), ['outside']);
    }),
    fuzzParams(300),
  );
});

test('entries Linux cannot hold are unsafe_archive errors naming them, not raw system errors', async () => {
  const meta = { mode: octal(0o644, 8), uid: octal(0, 8), mtime: octal(1_700_000_000, 12) };
  const entry = (over: Partial<RawEntry>): RawEntry => ({ name: 'f', flag: '0', link: '', body: Buffer.from('x'), size: null, ...meta, pax: [], longName: null, ...over });
  const cases: [string, RawEntry[], RegExp][] = [
    ['a malformed LIBARCHIVE xattr name (was a URIError)', [entry({ pax: [['LIBARCHIVE.xattr.%zz', 'eA==']] })], /xattr name/],
    ['a name component over 255 bytes (was ENAMETOOLONG)', [entry({ longName: `d/${'n'.repeat(300)}` })], /longer than 255 bytes/],
    ['a path over 4095 bytes', [entry({ longName: Array.from({ length: 40 }, () => 'p'.repeat(200)).join('/') })], /longer than 4095 bytes/],
    ['a uid past 32 bits (was ERR_OUT_OF_RANGE from chown)', [entry({ pax: [['uid', '4294967296']] })], /invalid uid/],
    ['an mtime in the year 300000 (was accepted)', [entry({ pax: [['mtime', '1e13']] })], /invalid mtime/],
    ['a symlink without a target', [entry({ flag: '2', body: Buffer.alloc(0) })], /target/],
  ];
  for (const [label, entries, message] of cases) {
    const root = mkdtempSync(join(work, 'root-'));
    try {
      await assert.rejects(
        applyLayer(chunks(serialize(entries)), newUnpackState(root, { maxEntries: 100, maxBytes: 1 << 20 }), 'layer'),
        (err: unknown) => err instanceof CellError && err.code === 'unsafe_archive' && message.test(err.message),
        label,
      );
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
});
