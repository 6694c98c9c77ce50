/**
 * The little of the DNS wire format (RFC 1035) celld's DNS relay (VM names) and the fake internet of the tests need: parse a query, answer it
 * with A records or an error code, and the client side (encode a query, parse an answer) for
 * tests. Hand-written rather than a dependency: the project has no DNS package, and this is small.
 * Every read is bounds-checked and nothing here throws on hostile input: queries will come from
 * guests through celld, and a bad packet must cost the server nothing but a FORMERR or silence.
 */

export const TYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, OPT: 41, ANY: 255 } as const;
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const CLASS_IN = 1;
const HEADER = 12;
/** A name is at most 255 bytes on the wire and a label at most 63 (RFC 1035 2.3.4). */
const MAX_NAME = 255;
const MAX_LABEL = 63;

export interface DnsQuestion {
  /** Lower-cased presentation form without the final dot; bytes outside [a-z0-9-_] escaped as \DDD. */
  name: string;
  type: number;
  class: number;
}

export interface DnsQuery {
  id: number;
  /** Recursion desired, echoed in the answer. */
  rd: boolean;
  question: DnsQuestion;
  /** The question section's bytes as received, copied into the answer. */
  questionBytes: Buffer;
}

/** Why a packet is not a query we answer: `reply` has an id and an rcode, `drop` has nothing worth answering. */
export type ParseResult =
  | { ok: true; query: DnsQuery }
  | { ok: false; drop: true; reason: string }
  | { ok: false; drop: false; id: number; rd: boolean; rcode: number; reason: string };

/**
 * Read an uncompressed name at `offset`. Compression pointers are refused: a query's single
 * question never needs one, and refusing them removes pointer loops altogether.
 */
function readName(buf: Buffer, offset: number): { name: string; end: number } | { error: string } {
  const labels: string[] = [];
  let at = offset;
  let wire = 0;
  for (;;) {
    if (at >= buf.length) return { error: 'name runs past the packet' };
    const len = buf[at]!;
    if ((len & 0xc0) !== 0) return { error: len >= 0xc0 ? 'compression pointer in the question' : 'reserved label type' };
    wire += len + 1;
    if (wire > MAX_NAME) return { error: 'name longer than 255 bytes' };
    at += 1;
    if (len === 0) break;
    if (len > MAX_LABEL) return { error: 'label longer than 63 bytes' };
    if (at + len > buf.length) return { error: 'label runs past the packet' };
    labels.push(escapeLabel(buf.subarray(at, at + len)));
    at += len;
  }
  return { name: labels.join('.'), end: at };
}

// A label may hold any byte, dots included: escaping keeps "a.b" (one label) from matching the
// two-label name a.b, and keeps control bytes out of logs.
function escapeLabel(bytes: Buffer): string {
  let s = '';
  for (const b of bytes) {
    const c = b >= 0x41 && b <= 0x5a ? b + 0x20 : b;
    const plain = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f;
    s += plain ? String.fromCharCode(c) : `\\${String(c).padStart(3, '0')}`;
  }
  return s;
}

/** Parse a packet that should be a standard query with one question. Never throws. */
export function parseQuery(buf: Buffer): ParseResult {
  if (buf.length < HEADER) return { ok: false, drop: true, reason: `short packet (${buf.length} bytes)` };
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  const rd = (flags & 0x0100) !== 0;
  // Answering a response could start a loop between two servers: stay silent.
  if (flags & 0x8000) return { ok: false, drop: true, reason: 'a response, not a query' };
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return { ok: false, drop: false, id, rd, rcode: RCODE.NOTIMP, reason: `opcode ${opcode}` };
  const qdcount = buf.readUInt16BE(4);
  if (qdcount !== 1) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR, reason: `${qdcount} questions` };
  const name = readName(buf, HEADER);
  if ('error' in name) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR, reason: name.error };
  if (name.end + 4 > buf.length) return { ok: false, drop: false, id, rd, rcode: RCODE.FORMERR, reason: 'question runs past the packet' };
  const type = buf.readUInt16BE(name.end);
  const klass = buf.readUInt16BE(name.end + 2);
  // Answer, authority and additional records (an EDNS OPT at most, from a stub) are ignored.
  return {
    ok: true,
    query: { id, rd, question: { name: name.name, type, class: klass }, questionBytes: Buffer.from(buf.subarray(HEADER, name.end + 4)) },
  };
}

/** An answer to a packet parseQuery could not accept: header only, no question. */
export function encodeError(id: number, rd: boolean, rcode: number): Buffer {
  const out = Buffer.alloc(HEADER);
  out.writeUInt16BE(id, 0);
  out.writeUInt16BE(0x8000 | 0x0400 | (rd ? 0x0100 : 0) | 0x0080 | (rcode & 0xf), 2);
  return out;
}

/**
 * The answer to `query`: `addresses` as A records (authoritative), or `rcode` with no records.
 * Over UDP (limit 512) records that do not fit are left off and TC is set, so the client retries
 * over TCP.
 */
export function encodeAnswer(query: DnsQuery, rcode: number, addresses: readonly string[], ttl: number, limit = 65535): Buffer {
  const header = Buffer.alloc(HEADER);
  const records: Buffer[] = [];
  let size = HEADER + query.questionBytes.length;
  let truncated = false;
  for (const address of addresses) {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc000 | HEADER, 0); // the name: a pointer to the question's
    rr.writeUInt16BE(TYPE.A, 2);
    rr.writeUInt16BE(CLASS_IN, 4);
    rr.writeUInt32BE(ttl >>> 0, 6);
    rr.writeUInt16BE(4, 10);
    const octets = address.split('.').map(Number);
    for (let i = 0; i < 4; i++) rr[12 + i] = octets[i]! & 0xff;
    if (size + rr.length > limit) {
      truncated = true;
      break;
    }
    records.push(rr);
    size += rr.length;
  }
  header.writeUInt16BE(query.id, 0);
  // QR, AA, RD as asked, RA (stubs and celld treat this server as a recursive resolver), TC when cut.
  header.writeUInt16BE(0x8000 | 0x0400 | (truncated ? 0x0200 : 0) | (query.rd ? 0x0100 : 0) | 0x0080 | (rcode & 0xf), 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(records.length, 6);
  return Buffer.concat([header, query.questionBytes, ...records]);
}

// --- client side, for tests ---

/** A query for `name` (plain labels, dot-separated) of `type`, recursion desired. */
export function encodeQuery(id: number, name: string, type: number = TYPE.A): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter((l) => l.length > 0);
  const parts = labels.map((l) => {
    const b = Buffer.from(l, 'latin1');
    if (b.length > MAX_LABEL) throw new Error(`label too long: ${l}`);
    return Buffer.concat([Buffer.from([b.length]), b]);
  });
  const header = Buffer.alloc(HEADER);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(0x0100, 2);
  header.writeUInt16BE(1, 4);
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(type, 1);
  tail.writeUInt16BE(CLASS_IN, 3);
  return Buffer.concat([header, ...parts, tail]);
}

export interface DnsAnswer {
  id: number;
  rcode: number;
  truncated: boolean;
  authoritative: boolean;
  /** The question as echoed (absent in header-only error answers). */
  question?: DnsQuestion;
  /** A records in the answer section, dotted quads. */
  addresses: string[];
  ttls: number[];
}

/**
 * Parse an answer from this server (or any that does not compress names other than by pointers
 * to the question). Throws on malformed input: it is for tests, reading our own server.
 */
export function parseAnswer(buf: Buffer): DnsAnswer {
  if (buf.length < HEADER) throw new Error(`short DNS answer (${buf.length} bytes)`);
  const flags = buf.readUInt16BE(2);
  if (!(flags & 0x8000)) throw new Error('not a DNS answer');
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  const out: DnsAnswer = {
    id: buf.readUInt16BE(0),
    rcode: flags & 0xf,
    truncated: (flags & 0x0200) !== 0,
    authoritative: (flags & 0x0400) !== 0,
    addresses: [],
    ttls: [],
  };
  let at = HEADER;
  if (qd > 1) throw new Error(`${qd} questions in an answer`);
  if (qd === 1) {
    const name = readName(buf, at);
    if ('error' in name) throw new Error(name.error);
    if (name.end + 4 > buf.length) throw new Error('question runs past the answer');
    out.question = { name: name.name, type: buf.readUInt16BE(name.end), class: buf.readUInt16BE(name.end + 2) };
    at = name.end + 4;
  }
  for (let i = 0; i < an; i++) {
    // Owner name: a pointer (2 bytes) or labels ending in a zero byte / a pointer.
    while (at < buf.length && buf[at] !== 0 && (buf[at]! & 0xc0) !== 0xc0) at += buf[at]! + 1;
    if (at >= buf.length) throw new Error('record runs past the answer');
    at += buf[at] === 0 ? 1 : 2;
    if (at + 10 > buf.length) throw new Error('record runs past the answer');
    const type = buf.readUInt16BE(at);
    const ttl = buf.readUInt32BE(at + 4);
    const rdlen = buf.readUInt16BE(at + 8);
    at += 10;
    if (at + rdlen > buf.length) throw new Error('record data runs past the answer');
    if (type === TYPE.A && rdlen === 4) {
      out.addresses.push([...buf.subarray(at, at + 4)].join('.'));
      out.ttls.push(ttl);
    }
    at += rdlen;
  }
  return out;
}
