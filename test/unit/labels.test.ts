import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matchesLabels, mergeLabels, parseLabels } from '../../src/domain/labels.js';
import { CellError } from '../../src/domain/errors.js';

test('labels: KEY=VALUE and a bare key parse; bad keys, control characters and too many are refused', () => {
  assert.deepEqual(parseLabels(['team=ml', 'tier', 'url=http://x/?a=b']), { team: 'ml', tier: '', url: 'http://x/?a=b' });
  assert.equal(parseLabels([]), undefined);
  for (const bad of ['=x', ' team=x', 'te am=x', 'a=\u001b[2J']) {
    assert.throws(() => parseLabels([bad]), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument', bad);
  }
  assert.throws(() => parseLabels(Array.from({ length: 65 }, (_, i) => `k${i}=v`)), /at most 64 labels/);
});

test("labels: a fork's or snapshot's are its source's with its own on top; filters match a key or a key and value, all of them", () => {
  assert.deepEqual(mergeLabels({ team: 'ml', stage: 'dev' }, { stage: 'warm' }), { team: 'ml', stage: 'warm' });
  assert.equal(mergeLabels(undefined, undefined), undefined);
  const labels = { team: 'ml', tier: '' };
  assert.ok(matchesLabels(labels, ['team']));
  assert.ok(matchesLabels(labels, ['team=ml', 'tier']));
  assert.ok(matchesLabels(labels, ['tier=']));
  assert.ok(!matchesLabels(labels, ['team=web']));
  assert.ok(!matchesLabels(labels, ['team=ml', 'gpu']));
  assert.ok(!matchesLabels(undefined, ['team']));
  assert.ok(!matchesLabels({ constructor: 'x' } as Record<string, string>, ['toString']), 'no inherited keys');
});
