import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LogTail, type LogPiece } from '../../src/domain/log-window.js';
import { formatDuration, parseDuration, parseSince } from '../../src/domain/duration.js';
import { CellError } from '../../src/domain/errors.js';

const entry = (text: string, stream: LogPiece['stream'] = 'stdout'): LogPiece => ({ time: '2026-12-03T10:00:00.000Z', stream, text });
const text = (pieces: LogPiece[]) => pieces.map((p) => p.text).join('');

test('--tail: the last N lines whatever chunks they came in, an unfinished last line counting as one', () => {
  const tail = new LogTail(2);
  for (const chunk of ['one\ntw', 'o\nthree', '\nfour\nfi']) tail.push(entry(chunk));
  assert.equal(text(tail.entries()), 'four\nfi');
  const zero = new LogTail(0);
  zero.push(entry('a\nb\n'));
  assert.deepEqual(zero.entries(), []);
  const mixed = new LogTail(2);
  mixed.push(entry('out1\n'));
  mixed.push(entry('err1\n', 'stderr'));
  mixed.push(entry('out2\n'));
  assert.deepEqual(mixed.entries().map((p) => [p.stream, p.text]), [['stderr', 'err1\n'], ['stdout', 'out2\n']]);
});

test('--tail agrees with tail -n on any text cut into any chunks', () => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom('a', 'b', '\n'), { maxLength: 60 }), fc.array(fc.nat(60)), fc.nat(8), (chars, cuts, n) => {
      const whole = chars.join('');
      const tail = new LogTail(n);
      let at = 0;
      for (const cut of [...new Set([...cuts.filter((c) => c < whole.length), whole.length])].sort((a, b) => a - b)) {
        if (cut > at) tail.push(entry(whole.slice(at, cut)));
        at = cut;
      }
      const lines = whole.match(/[^\n]*\n|[^\n]+$/g) ?? [];
      assert.equal(text(tail.entries()), n === 0 ? '' : lines.slice(-n).join(''));
    }),
  );
});

test("durations as Docker writes them (plus days); --since as a time, Unix seconds or a duration ago", () => {
  assert.equal(parseDuration('90', 'x'), 90_000);
  assert.equal(parseDuration('1h30m', 'x'), 5_400_000);
  assert.equal(parseDuration('500ms', 'x'), 500);
  assert.equal(parseDuration('1.5s', 'x'), 1500);
  assert.equal(parseDuration('2d', 'x'), 172_800_000);
  for (const bad of ['', 'ten', '5 m', '-5s', '1w', 's']) {
    assert.throws(() => parseDuration(bad, '--ttl'), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && err.message.startsWith('--ttl must be a duration'), bad);
  }
  assert.equal(formatDuration(5_400_000), '1h30m');
  assert.equal(formatDuration(90_061_000), '1d1h1m1s');
  const now = Date.parse('2026-12-03T10:00:00Z');
  assert.equal(parseSince('10m', '--since', now).toISOString(), '2026-12-03T09:50:00.000Z');
  assert.equal(parseSince('2026-12-03T09:00:00Z', '--since', now).toISOString(), '2026-12-03T09:00:00.000Z');
  assert.equal(parseSince('1764756000', '--since', now).toISOString(), '2025-12-03T10:00:00.000Z');
  assert.throws(() => parseSince('2026-13-45', '--since', now), /is not a valid time/);
  assert.throws(() => parseSince('yesterday', '--since', now), /--since must be a time/);
});
