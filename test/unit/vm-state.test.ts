import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { assertTransition, canTransition, VM_STATES, VM_TRANSITIONS, type VmState } from '../../src/domain/vm-state.js';
import { newVmRecord } from '../../src/domain/vm.js';
import { openDatabase } from '../../src/store/database.js';
import { VmStore } from '../../src/store/vm-store.js';

const spec = { image: 'busybox', imageDigest: 'sha256:x', cpus: 1, memoryMib: 256, cmd: [], env: [], workingDir: '/', user: 'root', timeoutSec: 0, autoRemove: false };

test('the lifecycle table: every state reaches stopped, stopped can start again, nothing skips starting', () => {
  for (const from of VM_STATES) {
    for (const to of VM_STATES) assert.equal(canTransition(from, to), VM_TRANSITIONS[from][to] !== undefined, `${from} -> ${to}`);
  }
  // Whatever a VM is doing, a path to stopped exists (recovery depends on it).
  for (const from of VM_STATES.filter((s) => s !== 'created')) {
    const seen = new Set<VmState>([from]);
    const queue: VmState[] = [from];
    while (queue.length) for (const next of Object.keys(VM_TRANSITIONS[queue.shift()!]) as VmState[]) if (!seen.has(next)) (seen.add(next), queue.push(next));
    assert.ok(seen.has('stopped'), `${from} cannot reach stopped`);
  }
  assert.equal(canTransition('created', 'running'), false);
  assert.equal(canTransition('stopped', 'running'), false);
  assert.equal(canTransition('stopped', 'stopping'), false);
  assert.equal(canTransition('stopped', 'starting'), true);
});

test('an illegal transition is a typed error that names the allowed ones', () => {
  assert.throws(
    () => assertTransition('box', 'created', 'running'),
    (err: unknown) => err instanceof CellError && err.code === 'invalid_state' && /box cannot go from created to running/.test(err.message) && /starting/.test(err.message),
  );
});

test('VmStore.setState writes legal transitions and refuses illegal ones without writing anything', () => {
  const dir = mkdtempSync('/tmp/cell-state-');
  try {
    const db = openDatabase(join(dir, 'cell.db'));
    const store = new VmStore(db);
    const id = 'b'.repeat(64);
    store.insert(newVmRecord(id, 'box', spec, null));
    assert.throws(() => store.setState(id, 'running', { pid: 7 }), (err: unknown) => err instanceof CellError && err.code === 'invalid_state');
    const untouched = store.get(id)!;
    assert.equal(untouched.state, 'created');
    assert.equal(untouched.pid, null, 'a refused transition must not write its patch either');
    store.setState(id, 'starting', { accelerator: 'tcg' });
    const running = store.setState(id, 'running', { pid: 7 });
    assert.equal(running.state, 'running');
    assert.equal(store.get(id)!.pid, 7);
    assert.throws(() => store.setState(id, 'starting'), (err: unknown) => err instanceof CellError && err.code === 'invalid_state');
    assert.equal(store.get(id)!.state, 'running');
    assert.throws(() => store.setState('c'.repeat(64), 'starting'), (err: unknown) => err instanceof CellError && err.code === 'not_found');
    db.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
