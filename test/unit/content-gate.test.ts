/**
 * The image store's leases: GC (exclusive) never runs while a pull or import (shared) is in
 * flight, and a waiting GC is not starved by new pulls.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ContentGate } from '../../src/engine/content-gate.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = () => new Promise((r) => setTimeout(r, 5));

test('GC waits for every pull in flight; pulls run side by side', async () => {
  const gate = new ContentGate();
  const events: string[] = [];
  const pullA = deferred();
  const pullB = deferred();
  const a = gate.withShared(async () => (events.push('a start'), await pullA.promise, events.push('a end')));
  const b = gate.withShared(async () => (events.push('b start'), await pullB.promise, events.push('b end')));
  await tick();
  const gc = gate.withExclusive(async () => void events.push('gc'));
  await tick();
  assert.deepEqual(events, ['a start', 'b start'], 'the two pulls run at once; GC waits');
  pullA.resolve();
  await tick();
  assert.ok(!events.includes('gc'), 'GC still waits for the second pull');
  pullB.resolve();
  await Promise.all([a, b, gc]);
  assert.deepEqual(events, ['a start', 'b start', 'a end', 'b end', 'gc']);
});

test('a pull that starts while GC waits goes after it; a failed GC releases the gate', async () => {
  const gate = new ContentGate();
  const events: string[] = [];
  const pull = deferred();
  const first = gate.withShared(async () => (await pull.promise, events.push('pull 1')));
  await tick();
  const gc = gate.withExclusive(async () => {
    events.push('gc');
    throw new Error('disk trouble');
  });
  await tick();
  const second = gate.withShared(async () => void events.push('pull 2'));
  await tick();
  pull.resolve();
  await first;
  await assert.rejects(gc, /disk trouble/);
  await second;
  assert.deepEqual(events, ['pull 1', 'gc', 'pull 2']);
});
