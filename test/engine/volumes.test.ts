/**
 * Named volumes on the fake backend (no QEMU): the store's rules. Real mounts, data across VMs and
 * kill -9 are in test/e2e/volumes.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { parseVolumeMount } from '../../src/domain/volume.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine();
});
after(async () => {
  await fake?.cleanup();
});

const code = (c: string, re?: RegExp) => (err: unknown) => err instanceof CellError && err.code === c && (!re || re.test(err.message));

test('one writer at a time: a second read-write boot is refused naming the holder, allowed once it stops; readers share while none writes', async () => {
  const { engine, backend } = fake;
  const a = await engine.vms.create({ image: 'busybox', name: 'writer-a', volumes: ['shared:/data2'] });
  assert.ok(await engine.vms.volumes.inspect('shared'), 'run -v made the missing volume');
  assert.deepEqual(a.spec.volumes, [{ volume: 'shared', path: '/data2', readOnly: false }]);
  await engine.vms.start(a.id);
  const spec = backend.starts.at(-1)!;
  assert.deepEqual(spec.volumes, [{ imagePath: fake.paths.volumeImage((await engine.vms.volumes.inspect('shared')).id), mountPoint: '/data2', readOnly: false }]);

  const b = await engine.vms.create({ image: 'busybox', name: 'writer-b', volumes: ['shared:/data2'] });
  await assert.rejects(engine.vms.start(b.id), code('conflict', /volume shared is in use by running VM writer-a: one VM writes a volume at a time/));
  assert.equal(engine.vms.resolve('writer-b').state, 'created', 'a refused boot changes nothing');
  const reader = await engine.vms.create({ image: 'busybox', name: 'reader', volumes: ['shared:/ref:ro'] });
  await assert.rejects(engine.vms.start(reader.id), code('conflict', /a volume another VM writes cannot be read meanwhile/));

  await engine.vms.stop('writer-a', 0);
  await engine.vms.start(reader.id);
  const reader2 = await engine.vms.create({ image: 'busybox', name: 'reader-2', volumes: ['shared:/ref:ro'] });
  await engine.vms.start(reader2.id);
  await assert.rejects(engine.vms.start(b.id), code('conflict', /in use by running VM reader \(read-only\), reader-2 \(read-only\)/));

  // rm: refused while running (even -f), refused while stopped VMs mount it unless -f.
  await assert.rejects(engine.vms.volumes.remove('shared', true), code('conflict', /in use by running VM reader, reader-2/));
  await engine.vms.remove('reader', true);
  await engine.vms.remove('reader-2', true);
  await assert.rejects(engine.vms.volumes.remove('shared'), code('conflict', /mounted by VM writer-a, writer-b \(stopped\)/));
  await engine.vms.volumes.remove('shared', true);
  await assert.rejects(engine.vms.start('writer-a'), code('not_found', /mounts volume shared, which is gone/));
  await engine.vms.remove('writer-a', true);
  await engine.vms.remove('writer-b', true);
});

test('a snapshot of a VM with a volume is refused with the rule; create, prune and a crashed create', async () => {
  const { engine, paths } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'snappy', volumes: ['keep:/keep'] });
  await engine.vms.start(vm.id);
  await assert.rejects(engine.snapshots.take('snappy'), code('conflict', /mounts volume keep: a snapshot \(or pause --to-disk\) of a VM with volumes is refused/));
  await assert.rejects(engine.suspends.suspend('snappy'), code('conflict'));
  await engine.vms.remove('snappy', true);

  await assert.rejects(engine.vms.create({ image: 'busybox', name: 'dreamer', volumes: ['keep:/keep'], idleTimeoutMs: 60_000, idleAction: 'pause-to-disk' }), code('invalid_argument', /pause-to-disk cannot go with -v/));
  await engine.vms.volumes.create('spare', { sizeBytes: 32 * 1024 * 1024, labels: ['team=ci'] });
  await assert.rejects(engine.vms.volumes.create('spare'), code('conflict', /exists already/));
  await assert.rejects(engine.vms.volumes.create('tiny', { sizeBytes: 1024 }), code('invalid_argument', /out of range/));
  const used = await engine.vms.create({ image: 'busybox', name: 'user', volumes: ['keep:/keep'] });
  const removed = await engine.vms.volumes.prune();
  assert.deepEqual(removed.map((v) => v.name), ['spare'], 'only volumes no VM mounts');
  assert.ok(await engine.vms.volumes.inspect('keep'));
  await engine.vms.remove(used.id, true);

  // An image whose row was never written (celld killed in create), and an export's staging folder, go at the next start.
  writeFileSync(join(paths.volumes, 'f'.repeat(64) + '.ext4'), 'orphan');
  mkdirSync(join(paths.volumes, '.export-cut-short'), { recursive: true });
  writeFileSync(join(paths.volumes, '.export-cut-short', 'volume.json'), '{}');
  const reopened = await fake.reopen();
  assert.deepEqual(readdirSync(paths.volumes).sort(), [`${(await reopened.vms.volumes.inspect('keep')).id}.ext4`]);
  await reopened.vms.volumes.remove('keep');
  assert.equal(existsSync(paths.volumeImage('x')), false);
});

test('-v syntax: names, modes and guest paths; host folders are refused with the reason', () => {
  assert.deepEqual(parseVolumeMount('cache:/root/.cache/'), { volume: 'cache', path: '/root/.cache', readOnly: false });
  assert.deepEqual(parseVolumeMount('db:/var/lib/db:ro'), { volume: 'db', path: '/var/lib/db', readOnly: true });
  for (const [bad, why] of [
    ['./src:/work', /host folders are not shared yet/],
    ['/abs:/work:ro', /host folders are not shared yet/],
    ['cache', /use NAME:\/guest\/path/],
    ['cache:relative', /must be absolute/],
    ['cache:/a/../b', /may not hold/],
    ['cache:/proc/x', /is the system's/],
    ['cache:/x:rx', /the mode is ro or rw/],
    ['bad name:/x', /invalid name/],
  ] as const) {
    assert.throws(() => parseVolumeMount(bad), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && why.test(err.message), bad);
  }
});
