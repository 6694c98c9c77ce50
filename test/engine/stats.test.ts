/**
 * `cell stats` through the engine on the fake backend: the sampler wired to live machines, the
 * backend's disk counters and the networking, for a running, a paused and a stopped VM.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine();
});
after(async () => {
  await fake?.cleanup();
});

test('engine.stats: a running VM has memory and disk figures, no network without a NIC; paused too; stopped is zeros and nulls; rm ends the stream', async () => {
  const { engine } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'meter', networks: ['none'] });
  await engine.vms.start(vm.id);
  const running = await engine.stats.once('meter', { intervalMs: 100 });
  assert.equal(running.id, vm.id);
  assert.equal(running.state, 'running');
  assert.ok(running.cpuPercent >= 0);
  assert.ok(running.memory && running.memory.rssBytes > 0 && running.memory.pssBytes > 0);
  assert.equal(running.memory.guestBytes, vm.spec.memoryMib * 1024 * 1024);
  assert.ok(running.disk && running.disk.readBytes >= 0 && running.disk.writeBytes >= 0);
  assert.equal(running.network, null, 'the fake backend has no NICs');

  await engine.vms.pause('meter');
  const paused = await engine.stats.once('meter', { intervalMs: 100 });
  assert.equal(paused.state, 'paused');
  assert.equal(paused.cpuPercent, 0, 'a stopped process uses no CPU');
  assert.ok(paused.memory, 'its memory stays');
  await engine.vms.unpause('meter');

  await engine.vms.stop('meter', 0);
  const stopped = await engine.stats.once('meter', { intervalMs: 10 });
  assert.deepEqual({ ...stopped, time: '' }, { id: vm.id, name: 'meter', state: 'stopped', time: '', cpus: vm.spec.cpus, cpuPercent: 0, memory: null, disk: null, network: null });

  const rows = [];
  for await (const row of engine.stats.stream('meter', { intervalMs: 10 })) {
    rows.push(row);
    if (rows.length === 1) await engine.vms.remove('meter');
  }
  assert.equal(rows.length, 1, 'the stream ended with the VM');
  await assert.rejects(engine.stats.once('meter'), (err: Error & { code?: string }) => err.code === 'not_found');
});
