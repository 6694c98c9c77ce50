import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { CellError } from '../../src/domain/errors.js';
import { HEALTH_LOG_KEPT, initialHealth, nextHealth, validateHealthCheck, type HealthProbe } from '../../src/domain/health.js';

const probe = (exitCode: number): HealthProbe => ({ start: '2026-01-01T00:00:00.000Z', end: '2026-01-01T00:00:00.100Z', exitCode, output: '' });

test('a shell string runs under /bin/sh -c with Docker defaults; an argv is kept; out-of-range values are refused with the flag named', () => {
  assert.deepEqual(validateHealthCheck({ cmd: 'curl -f localhost' }), { cmd: ['/bin/sh', '-c', 'curl -f localhost'], intervalMs: 30_000, timeoutMs: 30_000, retries: 3, startPeriodMs: 0 });
  assert.deepEqual(validateHealthCheck({ cmd: ['test', '-f', '/ok'], intervalMs: 250, retries: 1 }).cmd, ['test', '-f', '/ok']);
  const refused = (req: Parameters<typeof validateHealthCheck>[0], flag: RegExp) =>
    assert.throws(() => validateHealthCheck(req), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && flag.test(err.message));
  refused({ cmd: ' ' }, /--health-cmd needs a command/);
  refused({ cmd: ['', 'x'] }, /--health-cmd/);
  refused({ cmd: ['a\0b'] }, /--health-cmd/);
  refused({ cmd: 'true', intervalMs: 50 }, /--health-interval 50ms is out of range/);
  refused({ cmd: 'true', timeoutMs: 25 * 3600_000 }, /--health-timeout/);
  refused({ cmd: 'true', startPeriodMs: -1 }, /--health-start-period/);
  refused({ cmd: 'true', retries: 0 }, /--health-retries 0/);
  refused({ cmd: 'true', retries: 1.5 }, /--health-retries/);
});

test("Docker's rules: one success is healthy, `retries` counted failures in a row unhealthy, failures in the start period do not count", () => {
  let state = initialHealth();
  state = nextHealth(state, probe(1), { retries: 2 }, true);
  assert.deepEqual([state.status, state.failingStreak], ['starting', 0], 'a failure in the start period does not count');
  state = nextHealth(state, probe(1), { retries: 2 }, false);
  assert.deepEqual([state.status, state.failingStreak], ['starting', 1]);
  state = nextHealth(state, probe(1), { retries: 2 }, false);
  assert.deepEqual([state.status, state.failingStreak], ['unhealthy', 2]);
  state = nextHealth(state, probe(0), { retries: 2 }, false);
  assert.deepEqual([state.status, state.failingStreak], ['healthy', 0]);
  state = nextHealth(state, probe(1), { retries: 2 }, true);
  assert.deepEqual([state.status, state.failingStreak], ['healthy', 1], 'once healthy, the start period no longer excuses failures');
});

test('any sequence of probes: the log keeps the last few, the streak counts trailing failures, unhealthy exactly at the retries', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: -1, max: 3 }), { maxLength: 40 }), fc.integer({ min: 1, max: 5 }), (codes, retries) => {
      let state = initialHealth();
      for (const code of codes) state = nextHealth(state, probe(code), { retries }, false);
      const trailing = codes.length - 1 - codes.findLastIndex((c) => c === 0);
      assert.equal(state.failingStreak, codes.includes(0) ? trailing : codes.length);
      assert.equal(state.log.length, Math.min(codes.length, HEALTH_LOG_KEPT));
      const expected = state.failingStreak >= retries ? 'unhealthy' : codes.includes(0) ? 'healthy' : 'starting';
      assert.equal(state.status, expected);
    }),
  );
});
