import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ago, bytes, duration, elapsed, setupLine, table, vmState } from '../../src/cli/format.js';
import { infoText } from '../../src/cli/commands/system.js';
import { exitStatus } from '../../src/cli/context.js';
import type { Info } from '../../src/api/system.js';
import { lineage } from '../../src/cli/commands/snapshots.js';
import type { Snapshot } from '../../src/api/snapshots.js';

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
  assert.equal(vmState({ ...base, state: 'running', exit: null, health: { status: 'starting' } }, now), 'running 5s (health: starting)');
  assert.equal(vmState({ ...base, state: 'running', exit: null, health: { status: 'unhealthy' } }, now), 'running 5s (unhealthy)');
  assert.equal(vmState({ ...base, state: 'stopped', exit: { exitCode: 3, signal: null, reason: 'exited' } }, now), 'stopped (exit 3) 2m ago');
  assert.equal(vmState({ ...base, state: 'stopped', exit: { exitCode: null, signal: null, reason: 'boot_failed' } }, now), 'stopped (boot_failed) 2m ago');
});

test('the snapshot tree nests children under their parent', () => {
  const snap = (id: string, name: string, parent: string | null): Snapshot =>
    ({ id: id.repeat(64).slice(0, 64), name, parentVm: null, parentVmName: 'vm', parentSnapshot: parent ? parent.repeat(64).slice(0, 64) : null, spec: { image: 'busybox' } }) as unknown as Snapshot;
  const out = lineage([snap('a', 'base', null), snap('b', 'child', 'a'), snap('c', 'other', null)]);
  assert.equal(out, 'base aaaaaaaaaaaa from VM vm (image busybox)\n  └─ child bbbbbbbbbbbb from VM vm\nother cccccccccccc from VM vm (image busybox)\n');
});

test('set-up progress lines', () => {
  assert.equal(setupLine({ step: 'kernel', status: 'cached', detail: '6.1.0-56-cloud-amd64' }), '[kernel] cached: 6.1.0-56-cloud-amd64');
  assert.equal(setupLine({ step: 'initramfs', status: 'start' }), '[initramfs] building...');
  assert.equal(setupLine({ step: 'accelerator', status: 'start' }), '[accelerator] probing...');
  assert.equal(setupLine({ step: 'host packages', status: 'start', detail: 'installing qemu-system-x86' }), '[host packages] installing qemu-system-x86 ...');
  assert.equal(setupLine({ step: 'agent', status: 'done', detail: 'abc (900 bytes)' }, 1234), '[agent] done: abc (900 bytes) (1.2s)');
  assert.equal(setupLine({ step: 'agent', status: 'done' }), '[agent] done');
});

test('elapsed times for progress', () => {
  assert.equal(elapsed(400), '0.4s');
  assert.equal(elapsed(12_400), '12s');
  assert.equal(elapsed(185_000), '3m05s');
});

test('exit status follows the shell', () => {
  assert.equal(exitStatus({ exitCode: 3, signal: null }), 3);
  assert.equal(exitStatus({ exitCode: 137, signal: 9 }), 137);
  assert.equal(exitStatus({ exitCode: 0, signal: 15 }), 143);
});

test('cell info lines', () => {
  const info: Info = {
    version: '0.1.0',
    home: '/h',
    cacheDir: '/h/cache',
    accelerator: 'tcg',
    acceleratorReason: 'no /dev/kvm',
    qemuVersion: '7.2.22',
    guestKernel: '6.1.0',
    vms: { stopped: 2 },
    images: 1,
    spares: 0,
    pools: { pools: 1, ready: 3, memoryBytes: 3 * 42 * 2 ** 20, memoryMaxBytes: 6 * 2 ** 30 },
    imageCacheMaxBytes: null,
    network: { available: false, reason: 'celld is not root' },
    daemonPid: 42,
    remote: null,
  };
  const text = infoText(info);
  assert.match(text, /^Remote API: +off \(celld --listen HOST:PORT/m);
  assert.match(infoText({ ...info, remote: { url: 'https://h:7070', fingerprint: 'AB:CD' } }), /^Remote API: +https:\/\/h:7070 \(TLS certificate SHA-256 AB:CD\)/m);
  assert.match(text, /^Accelerator: +tcg \(no \/dev\/kvm\)$/m);
  assert.match(text, /^VMs: +0 running, 2 stopped$/m);
  assert.match(text, /^Daemon pid: +42$/m);
  assert.match(text, /^Pools: +1 snapshot, 3 spares ready; spares hold 126 MiB of 6\.0 GiB/m);
  assert.match(text, /^Network: +none: celld is not root$/m);
});
