/**
 * --ttl and --idle-timeout on the fake backend (the real agent, no QEMU): a TTL stops or removes,
 * exec keeps a VM from being idle, an idle VM is stopped or paused, `update` moves the limits, and
 * a TTL that ran out while celld was down is enforced when it is back. The real-QEMU path is in
 * test/e2e/daemon.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Engine } from '../../src/engine/engine.js';
import { NULL_SINK } from '../../src/engine/output.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine();
});
after(async () => {
  await fake?.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < deadline, what);
    await sleep(50);
  }
}

async function running(engine: Engine, name: string, limits: { ttlMs?: number; idleTimeoutMs?: number; idleAction?: 'stop' | 'pause' | 'pause-to-disk'; autoRemove?: boolean }) {
  const vm = await engine.vms.create({ image: 'busybox', name, ...limits });
  return engine.vms.start(vm.id);
}

test('a TTL stops the VM with reason ttl; with --rm it is removed; inspect says when it ends', async () => {
  const { engine } = fake;
  const vm = await running(engine, 'short', { ttlMs: 1500 });
  const inspected = await engine.vms.inspect('short');
  assert.equal(Date.parse(inspected.expiresAt!), Date.parse(vm.startedAt!) + 1500);
  await until('short stopped', () => engine.vms.resolve('short').state === 'stopped');
  assert.equal(engine.vms.resolve('short').exit?.reason, 'ttl');
  assert.equal((await engine.vms.inspect('short')).expiresAt, undefined, 'a stopped VM has no deadline');

  await running(engine, 'gone', { ttlMs: 1000, autoRemove: true });
  await until('gone removed', () => !engine.vms.list(true).some((v) => v.name === 'gone'));
  await engine.vms.remove('short');
});

test('exec keeps a VM from being idle; then it is stopped (or paused, or paused to disk) after its idle timeout; unpause starts the clock over', async () => {
  const { engine } = fake;
  await running(engine, 'worker', { idleTimeoutMs: 1500 });
  // A command running longer than the idle timeout is use, not idleness.
  const result = await engine.vms.exec('worker', { cmd: ['sleep', '2.5'] }, NULL_SINK);
  assert.equal(result.exitCode, 0);
  assert.equal(engine.vms.resolve('worker').state, 'running', 'not stopped while a command ran');
  await until('worker stopped when idle', () => engine.vms.resolve('worker').state === 'stopped', 8000);
  assert.equal(engine.vms.resolve('worker').exit?.reason, 'idle');
  await engine.vms.remove('worker');

  await running(engine, 'napper', { idleTimeoutMs: 1000, idleAction: 'pause' });
  await until('napper paused when idle', () => engine.vms.resolve('napper').state === 'paused');
  await engine.vms.unpause('napper');
  await sleep(300);
  assert.equal(engine.vms.resolve('napper').state, 'running', 'unpausing is a use');
  await engine.vms.remove('napper', true);

  await running(engine, 'dreamer', { idleTimeoutMs: 1000, idleAction: 'pause-to-disk' });
  await until('dreamer paused to disk when idle', () => engine.vms.resolve('dreamer').state === 'suspended');
  assert.equal((await engine.suspends.resume('dreamer')).state, 'running');
  await engine.vms.remove('dreamer', true);
});

test('update: a new TTL runs from now, 0 turns it off; an event says so; bad values change nothing', async () => {
  const { engine } = fake;
  await running(engine, 'kept', { ttlMs: 1000 });
  const updated = await engine.vms.update('kept', { ttlMs: 0, idleTimeoutMs: 60_000 });
  assert.deepEqual(updated.spec.timeouts, { idleTimeoutMs: 60_000 });
  await sleep(1800);
  assert.equal(engine.vms.resolve('kept').state, 'running', 'its TTL was turned off');
  await assert.rejects(engine.vms.update('kept', { ttlMs: 10 }), /--ttl 10ms is out of range/);
  assert.deepEqual(engine.vms.resolve('kept').spec.timeouts, { idleTimeoutMs: 60_000 });

  const before = Date.now();
  const later = await engine.vms.update('kept', { ttlMs: 1500 });
  assert.ok(Date.parse(later.spec.timeouts!.ttlSince!) >= before);
  await until('kept stopped by its new TTL', () => engine.vms.resolve('kept').state === 'stopped');
  assert.ok(Date.now() - before >= 1500, 'not before its TTL');
  const filter = { vm: ['kept'], snapshot: [], type: [], event: ['update'], label: [] };
  const updates = [];
  for await (const e of engine.events.read({ since: new Date(0), until: new Date(Date.now() + 50), filter })) updates.push(e.attributes);
  assert.deepEqual(updates, [{ idleTimeoutMs: '60000' }, { ttlMs: '1500', idleTimeoutMs: '60000' }]);
  await engine.vms.remove('kept');
});

test('a TTL that ran out while celld was down removes the VM when celld is back', async () => {
  await running(fake.engine, 'orphan', { ttlMs: 1500, autoRemove: true });
  const engine = await fake.crashAndReopen({ whileDown: async () => void (await sleep(2000)) });
  await until('orphan removed after the restart', () => !engine.vms.list(true).some((v) => v.name === 'orphan'), 10_000);
  assert.equal(fake.backend.alive().length, 0, 'its machine was ended');
});
