import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Snapshot } from '../../src/api/snapshots.js';
import type { Vm } from '../../src/api/vms.js';
import { lineage, type LineageNode } from '../../src/ui/lineage.js';

// The dashboard's snapshot tree (src/ui/views/tree.ts) draws what lineage() returns.

const vm = (id: string, baseSnapshot: string | null = null) => ({ id, name: id, baseSnapshot }) as Vm;
const snap = (id: string, parentVm: string | null, parentSnapshot: string | null = null) => ({ id, name: id, parentVm, parentSnapshot }) as Snapshot;
const draw = (nodes: LineageNode[]): unknown => nodes.map((n) => (n.children.length ? { [n.id]: draw(n.children) } : n.id));

test('the tree: VM -> snapshot -> forks -> their snapshots; the snapshotted VM stays above its own snapshot', () => {
  const vms = [vm('web', 'base'), vm('fork1', 'base'), vm('fork2', 'base'), vm('lone')];
  const snaps = [snap('base', 'web'), snap('later', 'fork1', 'base')];
  assert.deepEqual(draw(lineage(vms, snaps)), [{ web: [{ base: [{ fork1: ['later'] }, 'fork2'] }] }, 'lone']);
});

test('the tree: with its VM gone a snapshot hangs under the snapshot that VM came from; no parent left: a root', () => {
  const snaps = [snap('base', 'gone-vm'), snap('child', 'removed-fork', 'base'), snap('orphan', 'x', 'y')];
  assert.deepEqual(draw(lineage([vm('f', 'child')], snaps)), [{ base: [{ child: ['f'] }] }, 'orphan']);
});

test('the tree: records that would loop are cut into a root, nothing is lost', () => {
  const snaps = [snap('a', 'v'), snap('b', null, 'a')];
  const roots = lineage([vm('v', 'b')], snaps);
  const count = (nodes: LineageNode[]): number => nodes.reduce((n, x) => n + 1 + count(x.children), 0);
  assert.equal(count(roots), 3);
  assert.ok(roots.length >= 1);
});
