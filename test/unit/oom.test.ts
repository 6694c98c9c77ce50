import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeOom, PayloadWriter } from '../../src/agent/frame.js';
import { EventRateLimit, OOM_NAME_MAX_BYTES, oomAttributes, oomKill } from '../../src/domain/oom.js';

test('OOM frames: u32 pid and a string; a malformed payload is null, not an error', () => {
  const ok = new PayloadWriter().u32(86).string('sort').build();
  assert.deepEqual(decodeOom(ok), { pid: 86, name: Buffer.from('sort') });
  assert.equal(decodeOom(Buffer.alloc(7)), null, 'too short');
  assert.equal(decodeOom(Buffer.concat([ok, Buffer.from('x')])), null, 'trailing bytes');
  const lying = Buffer.from(ok);
  lying.writeUInt32BE(1000, 4);
  assert.equal(decodeOom(lying), null, 'a length past the payload');
});

test("a guest's OOM report is validated: a real pid, a name of at most 64 bytes without control characters", () => {
  assert.deepEqual(oomKill(86, Buffer.from('sort')), { pid: 86, process: 'sort' });
  for (const pid of [0, -1, 1.5, 4 * 1024 * 1024 + 1, 0xffffffff]) assert.equal(oomKill(pid, Buffer.from('x')), null, `pid ${pid}`);
  assert.equal(oomKill(5, Buffer.from('\x1b[31mred\x07\r\n\ttab\u0085\u202e'))!.process, '[31mredtab');
  assert.equal(oomKill(5, Buffer.alloc(0))!.process, '?');
  assert.equal(oomKill(5, Buffer.from('\x00\x01'))!.process, '?');
  const long = oomKill(5, Buffer.from('n'.repeat(1000)))!;
  assert.equal(Buffer.byteLength(long.process), OOM_NAME_MAX_BYTES);
  // A multi-byte character cut in two at the limit goes with the cut.
  const cut = oomKill(5, Buffer.from('a'.repeat(63) + 'é'))!;
  assert.equal(cut.process, 'a'.repeat(63));
  // The kernel's escapes of unprintable bytes are plain text and stay.
  assert.equal(oomKill(5, Buffer.from('\\x1b[0m'))!.process, '\\x1b[0m');
});

test('OOM events per VM: a burst of five, then two a second; the next one let through counts those left out', () => {
  let now = 1_000_000;
  const limit = new EventRateLimit(5, 2, now);
  const taken = Array.from({ length: 8 }, () => limit.take(now));
  assert.deepEqual(taken.slice(0, 5), Array(5).fill({ suppressed: 0 }));
  assert.deepEqual(taken.slice(5), [null, null, null]);
  now += 500; // one token back
  assert.deepEqual(limit.take(now), { suppressed: 3 });
  assert.equal(limit.take(now), null);
  now += 60_000; // never more than the burst
  assert.equal(Array.from({ length: 10 }, () => limit.take(now)).filter(Boolean).length, 5);
  // A guest that reports without end gets about two events a second.
  let recorded = 0;
  for (let i = 0; i < 10_000; i++) if (limit.take(now + i)) recorded++;
  assert.ok(recorded >= 19 && recorded <= 21, `${recorded} events in 10 s`);
  assert.deepEqual(oomAttributes({ pid: 86, process: 'sort' }, 0), { pid: '86', process: 'sort' });
  assert.deepEqual(oomAttributes({ pid: 86, process: 'sort' }, 3), { pid: '86', process: 'sort', suppressed: '3' });
});
