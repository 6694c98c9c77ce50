/**
 * The engine's VM lifecycle on the fake backend (no QEMU): boot, exec, stop, crash, illegal
 * transitions, and reconcile after a daemon restart or crash in each state.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { EXEC_WINDOW } from '../../src/agent/frame.js';
import { CellError } from '../../src/domain/errors.js';
import type { Engine } from '../../src/engine/engine.js';
import type { OutputSink } from '../../src/engine/output.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine();
});
after(async () => {
  await fake?.cleanup();
});

function collect(): OutputSink & { out: () => string } {
  const chunks: Buffer[] = [];
  return { stdout: (c) => chunks.push(c), stderr: () => {}, out: () => Buffer.concat(chunks).toString() };
}

async function runningVm(engine: Engine, name: string) {
  const vm = await engine.vms.create({ image: 'busybox', name });
  return engine.vms.start(vm.id);
}

test('create, start, exec, stop and remove go through the lifecycle and leave nothing', async () => {
  const { engine, backend, paths } = fake;
  const created = await engine.vms.create({ image: 'busybox', name: 'life' });
  assert.equal(created.state, 'created');
  const running = await engine.vms.start('life');
  assert.equal(running.state, 'running');
  assert.ok(backend.isRunning(running.pid!, running.id), 'the record names the live machine');
  const sink = collect();
  const result = await engine.vms.exec('life', { cmd: ['sh', '-c', 'echo hello from $X'], env: ['X=fake'] }, sink);
  assert.equal(result.exitCode, 0);
  assert.equal(sink.out(), 'hello from fake\n');

  await assert.rejects(engine.vms.start('life'), (err: unknown) => err instanceof CellError && err.code === 'conflict');
  const stopped = await engine.vms.stop('life', 1);
  assert.equal(stopped.state, 'stopped');
  assert.equal(stopped.exit?.reason, 'stopped');
  assert.equal(backend.isRunning(running.pid!, running.id), false, 'stop ends the machine');
  await assert.rejects(engine.vms.exec('life', { cmd: ['true'] }, collect()), (err: unknown) => err instanceof CellError && err.code === 'vm_not_running');

  const again = await engine.vms.start('life');
  assert.equal(again.state, 'running');
  assert.notEqual(again.pid, running.pid);
  await assert.rejects(engine.vms.remove('life'), (err: unknown) => err instanceof CellError && err.code === 'conflict');
  await engine.vms.remove('life', true);
  assert.equal(engine.vms.list(true).length, 0);
  assert.equal(existsSync(paths.vmDir(running.id)), false);
  assert.equal(existsSync(paths.memoryFile(running.id)), false, 'the RAM file goes with the VM');
  assert.equal(backend.alive().length, 0);
});

test('a machine that dies on its own is recorded as crashed, and its VM can start again', async () => {
  const { engine, backend } = fake;
  const vm = await runningVm(engine, 'crashy');
  await backend.crash(vm.id);
  // The control channel closing is the signal; give the listener its turn.
  await new Promise((r) => setTimeout(r, 50));
  const after = engine.vms.get(vm.id)!;
  assert.equal(after.state, 'stopped');
  assert.equal(after.exit?.reason, 'crashed');
  assert.equal((await engine.vms.start(vm.id)).state, 'running');
  await engine.vms.remove(vm.id, true);
});

test('a boot that fails leaves the VM stopped with boot_failed, and nothing running', async () => {
  const { engine, backend } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'broken' });
  backend.failStarts = 1;
  await assert.rejects(engine.vms.start(vm.id), (err: unknown) => err instanceof CellError && err.code === 'boot_failed');
  const after = engine.vms.get(vm.id)!;
  assert.equal(after.state, 'stopped');
  assert.equal(after.exit?.reason, 'boot_failed');
  assert.equal(backend.alive().length, 0);
  await engine.vms.remove(vm.id);
});

test('a daemon restart reconnects to running VMs, which keep working', async () => {
  const vm = await runningVm(fake.engine, 'survivor');
  const engine = await fake.reopen();
  const after = engine.vms.get(vm.id)!;
  assert.equal(after.state, 'running');
  assert.equal(after.pid, vm.pid);
  const sink = collect();
  assert.equal((await engine.vms.exec(vm.id, { cmd: ['echo', 'still here'] }, sink)).exitCode, 0);
  assert.equal(sink.out(), 'still here\n');
  await engine.vms.remove(vm.id, true);
});

test('a command a previous daemon held back (its reader stopped) runs on to its end after a restart', async () => {
  const vm = await runningVm(fake.engine, 'held-over');
  const marker = join(fake.paths.home, 'held-over-done'); // the fake guest's files are this host's
  let received = 0;
  const stopped: OutputSink = { stdout: (c) => void (received += c.length), stderr: () => {}, behind: () => new Promise<void>(() => {}) };
  const run = fake.engine.vms.exec(vm.id, { cmd: ['sh', '-c', `head -c 3000000 /dev/zero; touch ${marker}`] }, stopped);
  run.catch(() => {}); // it ends with agent_disconnected when the daemon goes
  for (let i = 0; i < 500 && received === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(received > 0 && received <= EXEC_WINDOW, `${received} bytes before the hold`);
  // The new daemon's connection knows nothing of that exec and will never grant it credit: its
  // HOST_HELLO makes the agent let the output flow again (dropped), so the command can finish.
  const engine = await fake.reopen();
  for (let i = 0; i < 1000 && !existsSync(marker); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(existsSync(marker), 'the command ran to its end');
  await engine.vms.remove(vm.id, true);
});

test('after a crash of celld, reconcile settles every state by the lifecycle table', async () => {
  const { engine, backend, paths } = fake;
  const alive = await runningVm(engine, 'rec-alive');
  const dead = await runningVm(engine, 'rec-dead');
  const starting = await runningVm(engine, 'rec-starting');
  const stopping = await runningVm(engine, 'rec-stopping');
  const idle = await engine.vms.create({ image: 'busybox', name: 'rec-created' });
  // Freeze records as a daemon killed mid-operation leaves them (through the one writer).
  const { VmStore } = await import('../../src/store/vm-store.js');
  const { openDatabase } = await import('../../src/store/database.js');
  const db = openDatabase(paths.db);
  const store = new VmStore(db);
  store.setState(starting.id, 'stopped');
  store.setState(starting.id, 'starting', { pid: starting.pid });
  store.setState(stopping.id, 'stopping');
  db.close();

  // The dead one's machine goes while no daemon watches.
  const again = await fake.crashAndReopen({ whileDown: () => backend.crash(dead.id) });
  const state = (id: string) => again.vms.get(id)!;
  assert.equal(state(alive.id).state, 'running', 'a live running VM is reattached');
  assert.equal(backend.isRunning(alive.pid!, alive.id), true);
  assert.equal(state(dead.id).state, 'stopped');
  assert.equal(state(dead.id).exit?.reason, 'lost');
  assert.equal(state(starting.id).state, 'stopped', 'a half-booted VM is not trusted to finish');
  assert.equal(state(starting.id).exit?.reason, 'lost');
  assert.equal(backend.isRunning(starting.pid!, starting.id), false, "its machine is ended");
  assert.equal(state(stopping.id).state, 'stopped');
  assert.equal(state(stopping.id).exit?.reason, 'stopped');
  assert.equal(backend.isRunning(stopping.pid!, stopping.id), false);
  assert.equal(again.vms.get(idle.id), undefined, 'a VM whose first boot never happened was half-made: it is gone');
  assert.equal(existsSync(paths.memoryFile(dead.id)), false, "a lost VM's RAM file is freed");
  for (const vm of again.vms.list(true)) await again.vms.remove(vm.id, true);
  assert.equal(backend.alive().length, 0);
});

test('guest RAM that would not fit the tmpfs is refused up front with the numbers, and a VM fits again once another stops', { skip: process.getuid?.() !== 0 && 'needs root to mount a small tmpfs' }, async () => {
  const { execFileSync } = await import('node:child_process');
  const small = await openFakeEngine();
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=100m', 'cellt-ram', small.paths.memory]);
  try {
    const first = await small.engine.vms.create({ image: 'busybox', name: 'one', memoryMib: 64 });
    await small.engine.vms.start(first.id);
    const second = await small.engine.vms.create({ image: 'busybox', name: 'two', memoryMib: 64 });
    await assert.rejects(small.engine.vms.start(second.id), (err: unknown) => {
      const e = err as { code?: string; message: string };
      assert.equal(e.code, 'resources_exhausted');
      assert.match(e.message, /^no room for VM two's RAM in .*: it needs up to 64 MiB and running VMs may still claim 64 MiB, but 9[0-9] MiB are free/);
      return true;
    });
    assert.equal(small.engine.vms.get(second.id)!.state, 'stopped');
    assert.equal(small.backend.alive().length, 1, 'the refused VM never started a machine');
    await small.engine.vms.stop(first.id, 0);
    assert.equal((await small.engine.vms.start(second.id)).state, 'running');
  } finally {
    await small.engine.close().catch(() => {});
    await small.backend.killAll();
    execFileSync('umount', [small.paths.memory]);
    await small.cleanup();
  }
});

test('a reader that falls behind holds its command back: output never piles up in celld, other execs on the VM go on, and none is lost', async () => {
  const { engine } = fake;
  const vm = await runningVm(engine, 'chatty');
  const TOTAL = 20_000_000;
  let received = 0;
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let heldAt = -1;
  const sink: OutputSink = {
    stdout: (c) => void (received += c.length),
    stderr: () => {},
    // Behind once, after the first MiB: like an API client that stopped reading.
    behind: () => (received > 1024 * 1024 && heldAt < 0 ? ((heldAt = received), released) : undefined),
  };
  const run = engine.vms.exec(vm.id, { cmd: ['head', '-c', String(TOTAL), '/dev/zero'] }, sink);
  for (let waited = 0; heldAt < 0 && waited < 10_000; waited += 10) await new Promise((r) => setTimeout(r, 10));
  assert.ok(heldAt > 0, 'the sink said it was behind');
  // What was already in flight (socket buffers) may still land; then nothing more.
  await new Promise((r) => setTimeout(r, 200));
  const during = received;
  await new Promise((r) => setTimeout(r, 400));
  // At most its credit: what the guest may send before it hears the reader is behind.
  assert.ok(received - heldAt <= EXEC_WINDOW, `held back: ${received - heldAt} bytes arrived after the hold`);
  assert.equal(received, during, 'nothing more arrives while the reader is behind');
  // Only that command waits: the VM's agent connection carries on.
  const other = collect();
  assert.equal((await engine.vms.exec(vm.id, { cmd: ['echo', 'not held'] }, other)).exitCode, 0);
  assert.equal(other.out(), 'not held\n');
  assert.equal(received, during);
  release();
  const result = await run;
  assert.equal(result.exitCode, 0);
  assert.equal(received, TOTAL, 'and nothing is lost');
  await engine.vms.remove(vm.id, true);
});

test("a guest flooding its console cannot fill the disk: celld cuts serial.log back past the cap", async () => {
  const capped = await openFakeEngine({ config: { logMaxBytes: 4096 } });
  try {
    const vm = await capped.engine.vms.create({ image: 'busybox', name: 'loud' });
    await capped.engine.vms.start(vm.id);
    const serial = capped.backend.files(capped.paths.vmDir(vm.id)).serialLog;
    const { appendFileSync, readFileSync, statSync } = await import('node:fs');
    appendFileSync(serial, 'x'.repeat(100_000));
    assert.equal(await capped.engine.consoleCap.sweep(), 1);
    assert.ok(statSync(serial).size < 4096);
    assert.match(readFileSync(serial, 'utf8'), /^\[cellvm: 100000 bytes of console output past the 4096-byte cap were dropped\]\n$/);
    appendFileSync(serial, 'quiet now\n');
    assert.equal(await capped.engine.consoleCap.sweep(), 0, 'a log under the cap is left alone');
  } finally {
    await capped.cleanup();
  }
});
