/**
 * Snapshots, forks, spares and the action cache's hold on snapshots, on the fake backend (no
 * QEMU): the engine's rules, not QEMU's mechanics (test/e2e covers those on real VMs).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import type { Engine } from '../../src/engine/engine.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine({ spares: { enabled: true, idleMs: 60_000 } });
});
after(async () => {
  await fake?.cleanup();
});

const code = (c: string) => (err: unknown) => err instanceof CellError && err.code === c;

async function snapshotOf(engine: Engine, vmName: string, snapName: string) {
  const vm = await engine.vms.create({ image: 'busybox', name: vmName });
  await engine.vms.start(vm.id);
  return { vm, snapshot: await engine.snapshots.take(vm.id, { name: snapName }) };
}

async function waitFor(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function removeAll(engine: Engine): Promise<void> {
  for (const vm of engine.vms.list(true)) await engine.vms.remove(vm.id, true);
  for (const s of [...engine.snapshots.list()].reverse()) await engine.snapshots.remove(s.id, true).catch(() => {});
}

test('a snapshot keeps its source running on the new layer; forks run on it; removal rules hold', async () => {
  const { engine, paths, backend } = fake;
  const { vm, snapshot } = await snapshotOf(engine, 'src', 'base');
  const source = engine.vms.get(vm.id)!;
  assert.equal(source.state, 'running', 'the source goes on after its snapshot');
  assert.equal(source.baseSnapshot, snapshot.id);
  for (const f of ['memory', 'state', 'disk.qcow2']) assert.ok(existsSync(join(paths.snapshotDir(snapshot.id), f)), f);
  assert.match(readFileSync(join(paths.snapshotDir(snapshot.id), 'disk.qcow2'), 'utf8'), /busybox\.ext4/, 'the frozen layer is the disk the VM wrote');

  const forks = await engine.snapshots.fork('base', { count: 3, namePrefix: 'kid' });
  assert.deepEqual(forks.map((f) => f.name), ['kid-1', 'kid-2', 'kid-3']);
  for (const f of forks) {
    assert.equal(f.state, 'running');
    assert.equal(f.baseSnapshot, snapshot.id);
  }
  // Each fork was restored from the snapshot's state, with the snapshot's RAM mapped privately.
  const restored = backend.starts.filter((s) => s.incoming && s.memory.path === join(paths.snapshotDir(snapshot.id), 'memory'));
  assert.ok(restored.length >= 3);
  assert.ok(restored.every((s) => !s.memory.shared));

  await assert.rejects(engine.snapshots.fork('base', { count: 1, name: 'kid-2' }), code('conflict'));
  // A second batch numbers on from the first (docker compose --scale does too), not into it.
  const more = await engine.snapshots.fork('base', { count: 2, namePrefix: 'kid' });
  assert.deepEqual(more.map((f) => f.name), ['kid-4', 'kid-5']);
  for (const f of more) await engine.vms.remove(f.id, true);
  await assert.rejects(engine.snapshots.fork('base', { count: 65 }), code('invalid_argument'));
  await assert.rejects(engine.snapshots.remove('base'), code('conflict'), 'VMs run on it');

  const child = await engine.snapshots.take('kid-1', { name: 'child' });
  assert.equal(child.parentSnapshot, snapshot.id);
  await engine.vms.remove('kid-1', true);
  await assert.rejects(engine.snapshots.remove('base'), (err: unknown) => code('conflict')(err) && /snapshot child/.test((err as Error).message), 'a snapshot on top chains through it');
  await engine.snapshots.remove('base', true);
  assert.deepEqual(engine.snapshots.list().map((s) => s.name), ['child'], 'forced: out of the list, but kept for what stands on it');
  assert.ok(existsSync(join(paths.snapshotDir(snapshot.id), 'disk.qcow2')));
  assert.equal(engine.vms.get(vm.id)!.state, 'running', 'its source VM is untouched');
  await removeAll(engine);
  assert.equal(engine.snapshots.list().length, 0);
  assert.deepEqual(readdirSync(paths.snapshots), []);
  assert.equal(backend.alive().length, 0);
});

test('spares: a fork starts one, the next fork takes it, it is refilled, dropped with its snapshot and on close', async () => {
  const { engine, paths, backend } = fake;
  const { snapshot } = await snapshotOf(engine, 'spare-src', 'spare-base');
  assert.equal(engine.spares.count(), 0, 'no spare before the first fork');
  const [first] = await engine.snapshots.fork(snapshot.id, { name: 'f1' });
  await waitFor('a spare', () => engine.spares.count() === 1);
  const spare = backend.alive().find((m) => m.dir.startsWith(paths.spares))!;
  assert.ok(spare, 'the spare waits in spares/');
  assert.equal(spare.paused, true, 'a spare does not run before a fork takes it');

  const [second] = await engine.snapshots.fork(snapshot.id, { name: 'f2' });
  assert.equal(second!.pid, spare.pid, 'the fork is the spare');
  assert.equal(second!.id, spare.id);
  assert.ok(existsSync(paths.vmDir(second!.id)) && !existsSync(paths.spareDir(spare.id)), 'its folder moved to vms/');
  const sink = { out: '', stdout(c: Buffer) { this.out += c; }, stderr() {} };
  assert.equal((await engine.vms.exec('f2', { cmd: ['echo', 'from the spare'] }, sink)).exitCode, 0);
  assert.equal(sink.out, 'from the spare\n');
  await waitFor('a new spare', () => engine.spares.count() === 1 && backend.alive().some((m) => m.dir.startsWith(paths.spares)));

  // Private-RAM forks (build steps) never take spares.
  const before = engine.spares.count();
  const [privateFork] = await engine.snapshots.fork(snapshot.id, { name: 'f3', copyMemory: true });
  assert.notEqual(privateFork!.pid, backend.alive().find((m) => m.dir.startsWith(paths.spares))?.pid);
  assert.equal(engine.spares.count(), before);

  for (const vm of [first!, second!, privateFork!]) await engine.vms.remove(vm.id, true);
  await engine.vms.remove('spare-src', true);
  await engine.snapshots.remove(snapshot.id);
  assert.equal(engine.spares.count(), 0, 'the spare went with its snapshot');
  assert.equal(backend.alive().length, 0);
  assert.deepEqual(readdirSync(paths.spares), []);
});

test('an idle spare expires, and a crash of celld leaves spares that the next celld sweeps', async () => {
  const engine = await fake.reopen({ spares: { enabled: true, idleMs: 200 } });
  const { paths, backend } = fake;
  const { snapshot } = await snapshotOf(engine, 'idle-src', 'idle-base');
  const [kid] = await engine.snapshots.fork(snapshot.id, { name: 'idle-kid' });
  await waitFor('a spare', () => engine.spares.count() === 1);
  await waitFor('the spare to expire', () => engine.spares.count() === 0 && !backend.alive().some((m) => m.dir.startsWith(paths.spares)), 3000);
  await waitFor('its folder to go', () => readdirSync(paths.spares).length === 0);

  const withSpare = await fake.reopen({ spares: { enabled: true, idleMs: 60_000 } });
  await withSpare.snapshots.fork(snapshot.id, { name: 'idle-kid2' });
  await waitFor('a spare', () => withSpare.spares.count() === 1);
  const orphan = backend.alive().find((m) => m.dir.startsWith(paths.spares))!;
  const swept = await fake.crashAndReopen();
  assert.equal(backend.isRunning(orphan.pid, orphan.id), false, "a dead celld's spare is ended by the next one");
  assert.deepEqual(readdirSync(paths.spares), []);
  assert.equal(swept.vms.get(kid!.id)!.state, 'running', 'VMs are not spares: they stay');
  await removeAll(swept);
  assert.equal(backend.alive().length, 0);
});

test('concurrent forks of one snapshot all run with distinct names; a failed fork takes its siblings with it', async () => {
  const engine = await fake.reopen({ spares: { enabled: true, idleMs: 60_000 } });
  const { backend } = fake;
  const { snapshot } = await snapshotOf(engine, 'con-src', 'con-base');
  const batches = await Promise.all([1, 2, 3].map((i) => engine.snapshots.fork(snapshot.id, { count: 2, namePrefix: `batch${i}` })));
  const forks = batches.flat();
  assert.equal(forks.length, 6);
  assert.equal(new Set(forks.map((f) => f.name)).size, 6);
  assert.equal(new Set(forks.map((f) => f.pid)).size, 6, 'no spare was handed to two forks');
  for (const f of forks) assert.equal(engine.vms.get(f.id)!.state, 'running');

  await waitFor('the spare', () => engine.spares.count() === 1);
  const vmsBefore = engine.vms.list(true).length;
  backend.failStarts = 1;
  await assert.rejects(engine.snapshots.fork(snapshot.id, { count: 3, namePrefix: 'doomed', copyMemory: true }), code('boot_failed'));
  assert.equal(engine.vms.list(true).length, vmsBefore, 'all or nothing: no fork of the failed batch is left');
  assert.equal(engine.vms.list(true).filter((v) => v.name.startsWith('doomed')).length, 0);
  await removeAll(engine);
  assert.equal(backend.alive().length, 0);
});

test('cache entries hold their snapshots against rm and prune; cache prune takes the entry and its snapshot', async () => {
  const { engine, paths } = fake;
  const { vm, snapshot } = await snapshotOf(engine, 'held-src', 'held');
  await engine.vms.remove(vm.id, true);
  engine.actions.record('k'.repeat(64), snapshot.id, 'held: make');
  assert.deepEqual(engine.snapshots.holders(snapshot.id), [`cache entry ${'k'.repeat(12)}`]);
  await assert.rejects(engine.snapshots.remove(snapshot.id), (err: unknown) => code('conflict')(err) && /cache entry/.test((err as Error).message));
  assert.deepEqual(await engine.snapshots.prune({ maxCount: 0 }), [], 'snapshot prune leaves held snapshots alone');
  assert.equal(engine.actions.lookup('k'.repeat(64))?.id, snapshot.id);

  // A VM on the cached snapshot keeps the entry through a cache prune.
  const [user] = await engine.snapshots.fork(snapshot.id, { name: 'user' });
  assert.deepEqual(await engine.actions.pruneCache({ maxCount: 0 }), []);
  await engine.vms.remove(user!.id, true);
  const pruned = await engine.actions.pruneCache({ maxCount: 0 });
  assert.deepEqual(pruned.map((e) => e.key), ['k'.repeat(64)]);
  assert.equal(engine.snapshots.list().length, 0);
  assert.equal(existsSync(paths.snapshotDir(snapshot.id)), false);
  assert.equal(engine.actions.lookup('k'.repeat(64)), undefined);
});

test('pause --to-disk: its QEMU ends, no list shows its snapshot, exec and start are refused; unpause restores it under the same id and drops the saved RAM; stop and rm -f take a suspended VM', async () => {
  const { engine, paths, backend } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'sleeper' });
  const running = await engine.vms.start(vm.id);
  const snapshotsBefore = engine.snapshots.list().length;
  const suspended = await engine.suspends.suspend('sleeper');
  assert.equal(suspended.state, 'suspended');
  assert.equal(backend.isRunning(running.pid!, vm.id), false, 'its machine ended');
  assert.equal(engine.snapshots.list().length, snapshotsBefore, 'its snapshot is private');
  assert.ok(existsSync(join(paths.snapshotDir(suspended.baseSnapshot!), 'memory')));
  assert.deepEqual(engine.vms.list().map((v) => v.name).includes('sleeper'), true, 'ps lists it');
  await assert.rejects(engine.vms.exec('sleeper', { cmd: ['true'] }, { stdout() {}, stderr() {} }), (err: unknown) => code('vm_paused')(err) && /paused to disk: cell unpause sleeper/.test((err as Error).message));
  await assert.rejects(engine.vms.start('sleeper'), (err: unknown) => code('conflict')(err) && /paused to disk/.test((err as Error).message));
  assert.equal((await engine.suspends.suspend('sleeper')).state, 'suspended', 'again: nothing changes');

  // A resume that fails (no room, QEMU refused) leaves it paused to disk, its memory kept, to try again.
  backend.failStarts = 1;
  await assert.rejects(engine.suspends.resume('sleeper'));
  assert.equal(engine.vms.resolve('sleeper').state, 'suspended');
  assert.ok(existsSync(join(paths.snapshotDir(suspended.baseSnapshot!), 'memory')));
  const back = await engine.suspends.resume('sleeper');
  assert.equal(back.state, 'running');
  assert.equal(back.id, vm.id);
  assert.equal(existsSync(join(paths.snapshotDir(suspended.baseSnapshot!), 'memory')), false, 'its saved RAM is gone once it runs on its own copy');
  assert.ok(existsSync(join(paths.snapshotDir(suspended.baseSnapshot!), 'disk.qcow2')), 'its disk layer stays under the VM');
  const restored = backend.starts.at(-1)!;
  assert.equal(restored.incoming, true, 'it was restored, not booted');

  // From a paused VM too; stop lets a suspended VM's memory go and start boots its disk.
  await engine.vms.pause('sleeper');
  const again = await engine.suspends.suspend('sleeper');
  const stopped = await engine.vms.stop('sleeper');
  assert.equal(stopped.state, 'stopped');
  assert.equal(existsSync(join(paths.snapshotDir(again.baseSnapshot!), 'memory')), false);
  assert.equal((await engine.vms.start('sleeper')).state, 'running');
  await engine.suspends.suspend('sleeper');
  await assert.rejects(engine.vms.remove('sleeper'), code('conflict'));
  await engine.vms.remove('sleeper', true);
  assert.equal(existsSync(paths.snapshotDir(again.baseSnapshot!)), false, 'its private snapshots go with it');
});
