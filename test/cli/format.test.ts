import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ago, bytes, duration, table, vmState } from '../../src/cli/format.js';
import { lineage } from '../../src/cli/commands/snapshots.js';
import type { Snapshot } from '../../src/api/schemas.js';

test('durations read like docker ps', () => {
  assert.equal(duration(4_400), '4s');
  assert.equal(duration(125_000), '2m');
  assert.equal(duration(3 * 3600_000), '3h');
  assert.equal(duration(72 * 3600_000), '3d');
  assert.equal(ago(new Date(1_000_000).toISOString(), 1_000_000 + 65_000), '1m ago');
  assert.equal(ago(null), '-');
});

test('sizes use binary units', () => {
  assert.equal(bytes(512), '512 B');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(bytes(256 * 1024 * 1024), '256 MiB');
});

test('tables align columns and do not pad the last one', () => {
  assert.equal(table(['A', 'LONGER'], [['xyz', '1'], ['q', '22']]), 'A     LONGER\nxyz   1\nq     22\n');
});

test('VM states say how a VM stopped', () => {
  const now = Date.parse('2026-01-01T00:10:00Z');
  const base = { startedAt: '2026-01-01T00:09:55Z', stoppedAt: '2026-01-01T00:08:00Z' };
  assert.equal(vmState({ ...base, state: 'running', exit: null }, now), 'running 5s');
  assert.equal(vmState({ ...base, state: 'stopped', exit: { exitCode: 3, signal: null, reason: 'exited' } }, now), 'stopped (exit 3) 2m ago');
  assert.equal(vmState({ ...base, state: 'stopped', exit: { exitCode: null, signal: null, reason: 'boot_failed' } }, now), 'stopped (boot_failed) 2m ago');
});

test('the snapshot tree nests children under their parent', () => {
  const snap = (id: string, name: string, parent: string | null): Snapshot =>
    ({ id: id.repeat(64).slice(0, 64), name, parentVm: null, parentVmName: 'vm', parentSnapshot: parent ? parent.repeat(64).slice(0, 64) : null, spec: { image: 'busybox' } }) as unknown as Snapshot;
  const out = lineage([snap('a', 'base', null), snap('b', 'child', 'a'), snap('c', 'other', null)]);
  assert.equal(out, 'base aaaaaaaaaaaa from VM vm (image busybox)\n  └─ child bbbbbbbbbbbb from VM vm\nother cccccccccccc from VM vm (image busybox)\n');
});
