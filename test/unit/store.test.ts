import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openDatabase } from '../../src/store/database.js';
import { VmStore } from '../../src/store/vm-store.js';
import type { VmRecord } from '../../src/domain/vm.js';

function record(id: string, name: string): VmRecord {
  return {
    id,
    name,
    state: 'created',
    spec: { image: 'busybox', imageDigest: 'sha256:x', cpus: 1, memoryMib: 256, cmd: ['true'], env: [], workingDir: '/', user: 'root', timeoutSec: 0, autoRemove: false },
    createdAt: new Date().toISOString(),
    startedAt: null,
    stoppedAt: null,
    pid: null,
    accelerator: null,
    exit: null,
    baseSnapshot: null,
  };
}

test('VM records survive reopening the database and keep their updates', () => {
  const dir = mkdtempSync('/tmp/cell-store-');
  try {
    const path = join(dir, 'cell.db');
    const db = openDatabase(path);
    const store = new VmStore(db);
    store.insert(record('a'.repeat(64), 'one'));
    store.setState('a'.repeat(64), 'starting');
    store.setState('a'.repeat(64), 'running', { pid: 42 });
    store.setState('a'.repeat(64), 'stopped', { pid: null, exit: { exitCode: 3, signal: null, reason: 'exited', at: 'now' } });
    db.close();

    const reopened = new VmStore(openDatabase(path));
    const vm = reopened.get('a'.repeat(64));
    assert.equal(vm?.state, 'stopped');
    assert.equal(vm?.exit?.exitCode, 3);
    assert.deepEqual(vm?.spec.cmd, ['true']);
    assert.deepEqual(reopened.countByState(), { stopped: 1 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a second VM with the same name is a conflict and nothing is written', () => {
  const dir = mkdtempSync('/tmp/cell-store-');
  try {
    const store = new VmStore(openDatabase(join(dir, 'cell.db')));
    store.insert(record('b'.repeat(64), 'same'));
    assert.throws(() => store.insert(record('c'.repeat(64), 'same')), /already in use/);
    assert.equal(store.list().length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a reference is resolved from the few rows it could mean, as it was from all of them", async () => {
  const { resolveRef } = await import('../../src/domain/ids.js');
  const dir = mkdtempSync('/tmp/cell-store-');
  try {
    const store = new VmStore(openDatabase(join(dir, 'cell.db')));
    const ids = ['abc123', 'abc999', 'def456', 'abcf00', 'ab0000'].map((p, i) => p + String(i).repeat(58));
    const names = ['alpha', 'beta', 'abc', 'gamma', 'def4'];
    ids.forEach((id, i) => store.insert(record(id, names[i]!)));
    const outcome = (records: VmRecord[], ref: string) => {
      try {
        return resolveRef('VM', ref, records).name;
      } catch (err) {
        return (err as Error).message;
      }
    };
    const refs = [...ids, ...names, 'abc', 'abc1', 'abc9', 'abcf', 'abcg', 'ab', 'ab0', 'def4', 'def45', 'zzz', '', 'ABC1', "a'; --", '%', 'abc%'];
    for (const ref of refs) assert.equal(outcome(store.matching(ref), ref), outcome(store.list(), ref), `reference "${ref}"`);
    assert.deepEqual(store.matching('abc').map((vm) => vm.name).sort(), ['abc', 'alpha', 'beta', 'gamma']);
    assert.equal(outcome(store.matching('abc9'), 'abc9'), 'beta');
    assert.match(outcome(store.matching('abc'.slice(0, 3) + '1'), 'abc1'), /^alpha$/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
