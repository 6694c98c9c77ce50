/**
 * Health checks on the fake backend (the real agent, no QEMU): Docker's transitions, the probe's
 * output and exit code kept, `wait` for healthy and for a stop, and health checks taken up again
 * by a restarted celld. The real-QEMU path is in test/e2e/lifecycle.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import type { HealthStatus } from '../../src/domain/health.js';
import type { Engine } from '../../src/engine/engine.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
let dir: string;
before(async () => {
  fake = await openFakeEngine();
  dir = mkdtempSync('/tmp/cell-health-');
});
after(async () => {
  await fake?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** A check that passes while `flag` exists (the fake's "guest" is a host process). */
function checkOn(flag: string) {
  return { cmd: `echo probing; test -f ${flag}`, intervalMs: 100, timeoutMs: 2000, retries: 2 };
}

async function statusSeen(engine: Engine, name: string, want: HealthStatus): Promise<void> {
  if (want === 'healthy') {
    await engine.wait(name, { until: 'healthy', timeoutMs: 20_000 });
    return;
  }
  const deadline = Date.now() + 20_000;
  while (engine.vms.resolve(name).health?.status !== want) {
    assert.ok(Date.now() < deadline, `VM ${name} became ${want} (it is ${engine.vms.resolve(name).health?.status})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a failing check makes the VM unhealthy after its retries, a passing one healthy; wait --healthy and its timeout', async () => {
  const { engine } = fake;
  const flag = join(dir, 'ok');
  const vm = await engine.vms.create({ image: 'busybox', name: 'probed', health: checkOn(flag) });
  assert.deepEqual(vm.spec.health?.cmd, ['/bin/sh', '-c', `echo probing; test -f ${flag}`]);
  const running = await engine.vms.start(vm.id);
  assert.equal(running.health?.status, 'starting', 'a boot starts its health over');

  await statusSeen(engine, 'probed', 'unhealthy');
  const sick = engine.vms.resolve('probed');
  assert.ok(sick.health!.failingStreak >= 2);
  const last = sick.health!.log.at(-1)!;
  assert.equal(last.exitCode, 1);
  assert.equal(last.output, 'probing\n', 'the probe output is kept');

  await assert.rejects(engine.wait('probed', { until: 'healthy', timeoutMs: 300 }), (err: unknown) => {
    assert.ok(err instanceof CellError && err.code === 'timeout', String(err));
    assert.match(err.message, /VM probed is not healthy after 300ms \(unhealthy; last check exited 1: probing\)/);
    return true;
  });

  writeFileSync(flag, '');
  const changes: string[] = [];
  const healthy = await engine.wait('probed', { until: 'healthy', timeoutMs: 20_000, onHealth: (v) => changes.push(v.health!.status) });
  assert.equal(changes.at(-1), 'healthy', 'the waiter hears of the change');
  assert.equal(healthy.health?.status, 'healthy');
  assert.equal(healthy.health?.failingStreak, 0);
  assert.ok(healthy.health!.log.length <= 5, 'only the last five probes are kept');

  const transitions: string[] = [];
  const filter = { vm: ['probed'], snapshot: [], type: [], event: ['health_status'], label: [] };
  for await (const e of engine.events.read({ since: new Date(0), until: new Date(Date.now() + 100), filter })) transitions.push(e.attributes.health_status!);
  assert.deepEqual(transitions, ['unhealthy', 'healthy'], 'each change of status is one event');

  // A new boot is `starting` again; stopping before healthy is an error for wait --healthy.
  rmSync(flag);
  await engine.vms.stop('probed', 0);
  const waitForHealthy = engine.wait('probed', { until: 'healthy' });
  await assert.rejects(waitForHealthy, (err: unknown) => err instanceof CellError && err.code === 'vm_not_running' && /stopped before it was healthy/.test(err.message));
  await engine.vms.remove('probed', true);
});

test('a probe that outlives its timeout fails with exit 124 and does not stall the next ones', async () => {
  const { engine } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'slow', health: { cmd: ['sleep', '30'], intervalMs: 100, timeoutMs: 200, retries: 1 } });
  await engine.vms.start(vm.id);
  await statusSeen(engine, 'slow', 'unhealthy');
  const probe = engine.vms.resolve('slow').health!.log.at(-1)!;
  assert.equal(probe.exitCode, 124);
  assert.match(probe.output, /health check timed out after 200ms/);
  assert.ok(Date.parse(probe.end) - Date.parse(probe.start) < 5000, 'the probe was ended at its timeout');
  await engine.vms.remove('slow', true);
});

test('wait until stopped answers with the exit; a VM without a check cannot be waited healthy; bad checks are refused', async () => {
  const { engine } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'plain' });
  await engine.vms.start(vm.id);
  await assert.rejects(engine.wait('plain', { until: 'healthy' }), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && /no health check/.test(err.message));
  await assert.rejects(engine.wait('plain', { until: 'stopped', timeoutMs: 100 }), (err: unknown) => err instanceof CellError && err.code === 'timeout' && /did not stop within 100ms/.test(err.message));
  const waiting = engine.wait('plain', { until: 'stopped' });
  await engine.vms.stop('plain', 0);
  assert.equal((await waiting).state, 'stopped');
  await engine.vms.remove('plain', true);

  for (const health of [{ cmd: '  ' }, { cmd: 'true', intervalMs: 10 }, { cmd: 'true', retries: 0 }, { cmd: [] as string[] }]) {
    await assert.rejects(engine.vms.create({ image: 'busybox', name: 'bad', health }), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument');
  }
  assert.deepEqual(engine.vms.list(true).map((v) => v.name), [], 'a refused check leaves no VM');
});

test('a restarted celld probes on with the health the VM had', async () => {
  const flag = join(dir, 'restart-ok');
  writeFileSync(flag, '');
  const vm = await fake.engine.vms.create({ image: 'busybox', name: 'kept', health: checkOn(flag) });
  await fake.engine.vms.start(vm.id);
  await statusSeen(fake.engine, 'kept', 'healthy');
  const engine = await fake.reopen();
  assert.equal(engine.vms.resolve('kept').health?.status, 'healthy', 'the status survives the restart');
  rmSync(flag);
  await statusSeen(engine, 'kept', 'unhealthy');
  await engine.vms.remove('kept', true);
});

test('a check whose child keeps its output open stays the one pending check: later probes fail at once and start no more processes', async () => {
  const { engine } = fake;
  const marker = `${Math.floor(Math.random() * 1e6)}.25`;
  const vm = await engine.vms.create({ image: 'busybox', name: 'stuck', health: { cmd: `setsid sleep ${marker} & echo started`, intervalMs: 100, timeoutMs: 200, retries: 1 } });
  await engine.vms.start(vm.id);
  const deadline = Date.now() + 20_000;
  while (!engine.vms.resolve('stuck').health?.log.some((p) => p.output.includes('still running'))) {
    assert.ok(Date.now() < deadline, 'a later probe found the first still running');
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 500));
  const { execFileSync } = await import('node:child_process');
  // The fake's guest processes are the host's: the setsid'd sleep is ours to end.
  const sleepers = () => execFileSync('pgrep', ['-fx', `sleep ${marker}`], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number);
  try {
    assert.equal(sleepers().length, 1, 'one guest process, not one per probe');
    assert.equal(engine.vms.resolve('stuck').health?.status, 'unhealthy');
  } finally {
    for (const pid of sleepers()) process.kill(pid, 'SIGKILL');
    await engine.vms.remove('stuck', true);
  }
});
