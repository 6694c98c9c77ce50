import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CellError } from '../../src/domain/errors.js';
import { applyTimeouts, dueTimeout, ttlDeadline } from '../../src/domain/timeouts.js';

const invalid = (fn: () => unknown, message: RegExp) => assert.throws(fn, (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && message.test(err.message));

test('limits: set, changed, turned off with 0 or null; a TTL set by update is stamped; bad values are refused', () => {
  assert.equal(applyTimeouts(undefined, {}), undefined);
  assert.deepEqual(applyTimeouts(undefined, { ttlMs: 60_000 }), { ttlMs: 60_000 });
  const now = new Date('2026-12-04T10:00:00Z');
  assert.deepEqual(applyTimeouts({ ttlMs: 60_000, idleTimeoutMs: 5000 }, { ttlMs: 120_000 }, now), { ttlMs: 120_000, ttlSince: now.toISOString(), idleTimeoutMs: 5000 });
  assert.deepEqual(applyTimeouts({ ttlMs: 60_000, ttlSince: now.toISOString(), idleTimeoutMs: 5000, idleAction: 'pause' }, { ttlMs: 0, idleTimeoutMs: null }), undefined, 'turning both off leaves nothing');
  assert.deepEqual(applyTimeouts({ idleTimeoutMs: 5000 }, { idleAction: 'pause' }), { idleTimeoutMs: 5000, idleAction: 'pause' });
  invalid(() => applyTimeouts(undefined, { idleAction: 'pause' }), /--idle-action needs --idle-timeout/);
  invalid(() => applyTimeouts(undefined, { ttlMs: 500 }), /--ttl 500ms is out of range/);
  invalid(() => applyTimeouts(undefined, { idleTimeoutMs: 400 * 86_400_000 }), /--idle-timeout .* is out of range/);
  invalid(() => applyTimeouts(undefined, { idleTimeoutMs: 5000, idleAction: 'sleep' as 'stop' }), /--idle-action must be stop, pause or pause-to-disk/);
});

test('the TTL runs from the start or from the last update, whichever is later; a TTL wins over idleness; busy VMs are not idle', () => {
  const started = '2026-12-04T10:00:00.000Z';
  const t0 = Date.parse(started);
  assert.equal(ttlDeadline({ ttlMs: 60_000 }, started), t0 + 60_000);
  assert.equal(ttlDeadline({ ttlMs: 60_000, ttlSince: '2026-12-04T10:05:00.000Z' }, started), t0 + 360_000, 'an update after the start');
  assert.equal(ttlDeadline({ ttlMs: 60_000, ttlSince: '2026-12-04T09:00:00.000Z' }, started), t0 + 60_000, "a fork's inherited stamp is older than its start");
  assert.equal(ttlDeadline({ idleTimeoutMs: 1000 }, started), undefined);
  assert.equal(ttlDeadline({ ttlMs: 1000 }, null), undefined, 'a VM that never started has no deadline');

  const limits = { ttlMs: 60_000, idleTimeoutMs: 10_000 };
  assert.equal(dueTimeout(limits, started, t0 + 5000, t0 + 14_999), undefined);
  assert.deepEqual(dueTimeout(limits, started, t0 + 5000, t0 + 15_000), { act: 'idle', action: 'stop' });
  assert.deepEqual(dueTimeout({ ...limits, idleAction: 'pause' }, started, t0, t0 + 10_000), { act: 'idle', action: 'pause' });
  assert.deepEqual(dueTimeout(limits, started, t0 + 60_000, t0 + 60_000), { act: 'ttl' });
});
