/**
 * The fake internet's DNS codec (src/network/dns-wire.ts) against hostile packets: guests will
 * reach this server through celld, so whatever the bytes, parseQuery returns a result and never
 * throws, and what it accepts stays within the packet. FUZZ_RUNS=N for longer runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { encodeAnswer, encodeError, encodeQuery, parseAnswer, parseQuery, RCODE, TYPE } from '../../src/network/dns-wire.js';
import { fuzzParams } from '../agent/fuzz-runs.js';

const label = fc.stringMatching(/^[a-z0-9-]{1,20}$/);
const name = fc.array(label, { minLength: 1, maxLength: 5 }).map((l) => l.join('.'));
const address = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((o) => o.join('.'));

test('a query round-trips: encodeQuery -> parseQuery -> encodeAnswer -> parseAnswer', () => {
  fc.assert(
    fc.property(fc.nat(0xffff), name, fc.array(address, { maxLength: 4 }), fc.nat(86400), (id, n, addrs, ttl) => {
      const parsed = parseQuery(encodeQuery(id, n, TYPE.A));
      assert.ok(parsed.ok);
      assert.deepEqual([parsed.query.id, parsed.query.question.name, parsed.query.question.type, parsed.query.rd], [id, n, TYPE.A, true]);
      const answer = parseAnswer(encodeAnswer(parsed.query, RCODE.NOERROR, addrs, ttl));
      assert.deepEqual([answer.id, answer.rcode, answer.truncated, answer.question?.name, answer.addresses], [id, 0, false, n, addrs]);
      assert.ok(answer.ttls.every((t) => t === ttl));
    }),
    fuzzParams(300),
  );
});

test('names are lower-cased, and bytes that are not plain (a dot inside a label) are escaped', () => {
  const q = parseQuery(encodeQuery(1, 'WWW.Site-A.test'));
  assert.ok(q.ok && q.query.question.name === 'www.site-a.test');
  // One label "a.b" is not the two-label name a.b.
  const packet = Buffer.concat([encodeQuery(2, 'x').subarray(0, 12), Buffer.from([3, 0x61, 0x2e, 0x62, 0, 0, 1, 0, 1])]);
  const dotted = parseQuery(packet);
  assert.ok(dotted.ok && dotted.query.question.name === 'a\\046b');
});

test('over the UDP limit, answers are cut and TC is set', () => {
  const q = parseQuery(encodeQuery(7, 'many.test'));
  assert.ok(q.ok);
  const addrs = Array.from({ length: 100 }, (_, i) => `100.64.0.${i}`);
  const cut = encodeAnswer(q.query, RCODE.NOERROR, addrs, 5, 512);
  assert.ok(cut.length <= 512);
  const a = parseAnswer(cut);
  assert.ok(a.truncated);
  assert.ok(a.addresses.length > 0 && a.addresses.length < 100);
  assert.equal(parseAnswer(encodeAnswer(q.query, RCODE.NOERROR, addrs, 5)).addresses.length, 100);
});

test('errors: FORMERR keeps the id, a header-only answer parses', () => {
  const a = parseAnswer(encodeError(0xbeef, true, RCODE.FORMERR));
  assert.deepEqual([a.id, a.rcode, a.question, a.addresses], [0xbeef, RCODE.FORMERR, undefined, []]);
});

test('hostile packets: parseQuery never throws, and whatever it accepts lies inside the packet', () => {
  // Real queries mutated (bytes flipped, cut short, grown) and plain random bytes.
  const mutated = fc
    .tuple(fc.nat(0xffff), name, fc.array(fc.tuple(fc.nat(300), fc.nat(255)), { maxLength: 8 }), fc.nat(80), fc.uint8Array({ maxLength: 20 }))
    .map(([id, n, flips, cut, tail]) => {
      const b = Buffer.concat([encodeQuery(id, n), Buffer.from(tail)]);
      for (const [at, v] of flips) if (at < b.length) b[at] = v;
      return b.subarray(0, Math.max(0, b.length - cut));
    });
  const packet = fc.oneof(mutated, fc.uint8Array({ maxLength: 600 }).map((u) => Buffer.from(u)));
  fc.assert(
    fc.property(packet, (buf) => {
      const r = parseQuery(buf);
      if (r.ok) {
        assert.ok(12 + r.query.questionBytes.length <= buf.length);
        assert.ok(r.query.question.name.length <= 255 * 4, 'escaped name stays bounded');
        // Its answer is well-formed.
        const a = parseAnswer(encodeAnswer(r.query, RCODE.NXDOMAIN, [], 0));
        assert.equal(a.id, r.query.id);
      } else if (!r.drop) {
        assert.equal(parseAnswer(encodeError(r.id, r.rd, r.rcode)).rcode, r.rcode);
      }
    }),
    fuzzParams(2000),
  );
});
