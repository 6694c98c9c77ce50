/**
 * Named volumes on the fake backend (no QEMU): the store's rules. Real mounts, data across VMs and
 * kill -9 are in test/e2e/volumes.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { parseMount, parseMounts, parseVolumeMount } from '../../src/domain/volume.js';
import { absoluteMount } from '../../src/sdk/volumes.js';
import { shareQemuArgs, virtiofsdArgv } from '../../src/vmm/qemu/virtiofs.js';
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

test('a snapshot of a VM with a volume keeps its mounts; its forks mount the volume under the one-writer rule; create, prune and a crashed create', async () => {
  const { engine, paths } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'snappy', volumes: ['keep:/keep'] });
  await engine.vms.start(vm.id);
  const snap = await engine.snapshots.take('snappy', { name: 'snappy-snap' });
  assert.deepEqual(snap.spec.volumes, [{ volume: 'keep', path: '/keep', readOnly: false }]);
  assert.equal(engine.vms.get(vm.id)!.state, 'running', 'the VM goes on after its snapshot');
  await assert.rejects(engine.snapshots.fork('snappy-snap', { name: 'twin' }), code('conflict', /volume keep is in use by running VM snappy/));
  await engine.vms.stop('snappy', 0);
  const [twin] = await engine.snapshots.fork('snappy-snap', { name: 'twin' });
  assert.deepEqual(engine.vms.get(twin!.id)!.spec.volumes, snap.spec.volumes, 'the fork mounts the named volume');
  await engine.vms.remove(twin!.id, true);
  await engine.vms.remove('snappy', true);

  await assert.rejects(engine.vms.create({ image: 'busybox', name: 'dreamer', volumes: ['/srv:/keep'], idleTimeoutMs: 60_000, idleAction: 'pause-to-disk' }), code('invalid_argument', /pause-to-disk cannot go with a host folder/));
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

test('-v syntax: names, modes and guest paths; host folders are absolute paths, told from names', () => {
  assert.deepEqual(parseVolumeMount('cache:/root/.cache/'), { volume: 'cache', path: '/root/.cache', readOnly: false });
  assert.deepEqual(parseVolumeMount('db:/var/lib/db:ro'), { volume: 'db', path: '/var/lib/db', readOnly: true });
  assert.deepEqual(parseMount('/home/me/src/:/work:ro'), { kind: 'host', source: '/home/me/src/', path: '/work', readOnly: true });
  assert.deepEqual(parseMount('/srv//data/../x:/x'), { kind: 'host', source: '/srv/x', path: '/x', readOnly: false });
  for (const [bad, why] of [
    ['./src:/work', /must be an absolute path here \(the cell CLI resolves \.\/ and ~ for you\)/],
    ['~/src:/work', /must be an absolute path here/],
    ['cache', /use NAME:\/guest\/path\[:ro\] for a volume or \/host\/path:\/guest\/path\[:ro\] for a host folder/],
    ['cache:relative', /must be absolute/],
    ['cache:/a/../b', /may not hold/],
    ['cache:/proc/x', /is the system's/],
    ['/srv:/dev', /is the system's/],
    ['cache:/x:rx', /the mode is ro or rw/],
    ['bad name:/x', /invalid name/],
  ] as const) {
    assert.throws(() => parseMount(bad), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument' && why.test(err.message), bad);
  }
  assert.throws(() => parseVolumeMount('/srv:/x'), /a host folder is not a volume here/);
  assert.throws(() => parseMounts(['/a:/x', '/b:/x']), /guest path \/x is given twice/);
  assert.throws(() => parseMounts(['/a:/1', '/a:/2', '/a:/3', '/a:/4', '/a:/5']), /at most 4 host folders/);
  const both = parseMounts(['/srv/src:/work', 'cache:/cache:ro']);
  assert.deepEqual(both.volumes, [{ volume: 'cache', path: '/cache', readOnly: true }]);
  assert.deepEqual(both.hostFolders, [{ kind: 'host', source: '/srv/src', path: '/work', readOnly: false }]);
});

test('the CLI and SDK make relative host folders absolute where they mean something; names and absolute paths stay', () => {
  assert.equal(absoluteMount('./src:/work', '/home/me/proj', '/home/me'), '/home/me/proj/src:/work');
  assert.equal(absoluteMount('.:/work:ro', '/home/me/proj', '/home/me'), '/home/me/proj:/work:ro');
  assert.equal(absoluteMount('../x:/x', '/home/me/proj', '/home/me'), '/home/me/x:/x');
  assert.equal(absoluteMount('~/notes:/n', '/tmp', '/home/me'), '/home/me/notes:/n');
  assert.equal(absoluteMount('~:/n', '/tmp', '/home/me'), '/home/me:/n');
  assert.equal(absoluteMount('cache:/c', '/tmp', '/home/me'), 'cache:/c');
  assert.equal(absoluteMount('/abs:/a', '/tmp', '/home/me'), '/abs:/a');
});

test("a host folder's virtiofsd: as root for root, as the caller (uid, gid, groups) in a user namespace otherwise; QEMU gets modern virtio-mmio", () => {
  const folder = { source: '/srv/x', path: '/work', readOnly: true, owner: { uid: 1000, gid: 1000, groups: [1000, 27] } };
  const asCaller = virtiofsdArgv(folder, '/usr/lib/qemu/virtiofsd', 0);
  assert.deepEqual(asCaller.slice(0, 11), ['setpriv', '--reuid=1000', '--regid=1000', '--groups=1000,27', '--', 'unshare', '--user', '--map-root-user', '--mount', '--', '/bin/sh']);
  assert.deepEqual(asCaller.slice(-4), ['cell-share', '/srv/x', 'ro', '/usr/lib/qemu/virtiofsd']);
  assert.deepEqual(virtiofsdArgv({ ...folder, owner: { uid: 0, gid: 0, groups: [] } }, 'v', 0).slice(0, 4), ['unshare', '--mount', '--', '/bin/sh']);
  assert.equal(virtiofsdArgv(folder, 'v', 1000)[0], 'unshare', 'a celld that is not root cannot change user');
  assert.deepEqual(shareQemuArgs([]), []);
  assert.deepEqual(shareQemuArgs(['/s/0.sock']), ['-global', 'virtio-mmio.force-legacy=false', '-chardev', 'socket,id=share0,path=/s/0.sock', '-device', 'vhost-user-fs-device,chardev=share0,tag=cell-share-0']);
});
