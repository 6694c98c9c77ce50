import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellClient } from '../../src/sdk/index.js';
import { pushImage } from '../../src/image/push.js';
import { storeImage, tarOfTree } from '../image/image-builder.js';
import { startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { TestHome } from '../helpers/cell-home.js';

interface CacheJson {
  key: string;
  snapshotId: string;
  description: string;
  hits: number;
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

// Builds and cached actions on real VMs: each step forks the previous step's snapshot.
describe('cell build and cached actions', () => {
  let h: TestHome;
  let dir: string;
  let client: CellClient;
  before(async () => {
    h = new TestHome();
    dir = mkdtempSync('/tmp/cellt-build-');
    client = await CellClient.connect({ home: h.home });
  });
  after(async () => {
    client.close();
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  const writeBuild = (name: string, text: string) => {
    const file = join(dir, name);
    writeFileSync(file, text);
    return file;
  };
  /** Each step records a fresh random id: a step that re-ran leaves a different one. */
  const fourSteps = (third: string) => `base = "busybox"
[[step]]
run = "cat /proc/sys/kernel/random/uuid | tee /one"
[[step]]
run = "cat /proc/sys/kernel/random/uuid | tee /two"
[[step]]
env = { THIRD = "${third}" }
[[step]]
run = "echo $THIRD > /three; cat /proc/sys/kernel/random/uuid | tee /four"
`;
  const facts = async (snapshot: string) =>
    (await h.ok(['run', '--rm', '--from', snapshot, '--', 'sh', '-c', 'cat /one /two /three /four; echo $THIRD'])).stdout.trim().split('\n');

  test('a second build of unchanged steps runs nothing and returns the same snapshot', async () => {
    const file = writeBuild('four.toml', fourSteps('a'));
    const first = await h.ok(['build', '-f', file, '-t', 'four']);
    const ranIds = first.stdout.match(UUID) ?? [];
    assert.equal(ranIds.length, 3, `every run step printed its id: ${first.stdout}`);
    assert.match(first.stderr, /\[1\/4\] RUN cat \/proc\/sys\/kernel\/random\/uuid \| tee \/one/);
    assert.match(first.stderr, /built four \([0-9a-f]{12}\) in [\d.]+s: 3 steps ran, 0 from cache/);
    const before = await facts('four');
    assert.deepEqual(before, [...ranIds.slice(0, 2), 'a', ranIds[2], 'a']);

    const second = await h.ok(['build', '-q', '-f', file, '-t', 'four']);
    assert.doesNotMatch(second.stdout, UUID, 'no step ran: no step printed anything');
    const id = second.stdout.trim();
    const snapshots = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { id: string; name: string }[];
    assert.equal(snapshots.find((s) => s.name === 'four')?.id, id, 'the tag still names the same snapshot');
    assert.deepEqual(await facts('four'), before, 'the snapshot is the one the first build made');

    const verbose = await h.ok(['build', '-f', file]);
    assert.equal((verbose.stderr.match(/CACHED/g) ?? []).length, 3);
    assert.match(verbose.stderr, /0 steps ran, 3 from cache/);
  });

  test('--no-cache runs every step again and its results replace the cached ones', async () => {
    const before = await facts('four');
    const file = join(dir, 'four.toml');
    const fresh = await h.ok(['build', '--no-cache', '-f', file, '-t', 'four']);
    assert.equal((fresh.stdout.match(UUID) ?? []).length, 3, 'every run step ran');
    assert.doesNotMatch(fresh.stderr, /CACHED/);
    const after = await facts('four');
    assert.notEqual(after[0], before[0]);
    const cached = await h.ok(['build', '-f', file]);
    assert.equal((cached.stderr.match(/CACHED/g) ?? []).length, 3, 'the next build hits the new entries');
    assert.deepEqual(await facts('four'), after);
  });

  test('a change in step 3 re-runs steps 3 and 4 only; env reaches later steps and the result', async () => {
    const before = await facts('four');
    const file = writeBuild('four.toml', fourSteps('b'));
    const r = await h.ok(['build', '-f', file, '-t', 'four']);
    assert.match(r.stderr, /\[1\/4\] CACHED/);
    assert.match(r.stderr, /\[2\/4\] CACHED/);
    assert.match(r.stderr, /\[4\/4\] done in/);
    assert.match(r.stderr, /1 step ran, 2 from cache/);
    const after = await facts('four');
    assert.deepEqual(after.slice(0, 2), before.slice(0, 2), 'steps 1 and 2 were not re-run');
    assert.equal(after[2], 'b');
    assert.notEqual(after[3], before[3], 'step 4 ran again');
    assert.equal(after[4], 'b', 'the env step is in the final snapshot');
  });

  test('[healthcheck]: forks of the result carry the check and become healthy once it passes', async () => {
    const file = writeBuild('hc.toml', `base = "busybox"\n[healthcheck]\ncmd = "test -f /ready"\ninterval = "300ms"\nretries = 2\n[[step]]\nrun = "touch /ready"\n`);
    await h.ok(['build', '-f', file, '-t', 'hc']);
    await h.ok(['fork', '--name', 'hc-kid', 'hc']);
    assert.equal((await h.ok(['wait', '--healthy', '--timeout', '120s', 'hc-kid-1'])).stdout, 'hc-kid-1\n');
    const [vm] = JSON.parse((await h.ok(['inspect', 'hc-kid-1'])).stdout) as { spec: { health: { cmd: string[]; intervalMs: number } } }[];
    assert.deepEqual([vm!.spec.health.cmd, vm!.spec.health.intervalMs], [['/bin/sh', '-c', 'test -f /ready'], 300]);
    await h.ok(['rm', '-f', 'hc-kid-1']);
  });

  test('a failing step stops the build with its exit code and output, and caches nothing', async () => {
    const failing = writeBuild('fail.toml', 'base = "busybox"\n[[step]]\nrun = "echo ok > /ok"\n[[step]]\nrun = "echo broken >&2; exit 7"\n[[step]]\nrun = "echo never"\n');
    const entriesBefore = (JSON.parse((await h.ok(['cache', 'ls', '--format', 'json'])).stdout) as CacheJson[]).length;
    const r = await h.cell(['build', '-f', failing, '-t', 'broken']);
    assert.equal(r.code, 7);
    assert.match(r.stderr, /broken\n/);
    assert.match(r.stderr, /\[2\] FAILED: step 2\/3 \(RUN echo broken >&2; exit 7\) exited with code 7/);
    assert.doesNotMatch(r.stdout, /never/);
    const entries = JSON.parse((await h.ok(['cache', 'ls', '--format', 'json'])).stdout) as CacheJson[];
    assert.equal(entries.length, entriesBefore + 1, 'only the step that succeeded is cached');
    const names = (JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[]).map((s) => s.name);
    assert.ok(!names.includes('broken'));
    assert.deepEqual(JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout), [], 'no VM of the build is left');
    const { spares } = JSON.parse((await h.ok(['info', '--format', 'json'])).stdout) as { spares: number };
    assert.equal(h.qemuPids().length, spares, 'no QEMU is left but the spares of snapshots forked earlier');
    const fixed = writeBuild('fail.toml', 'base = "busybox"\n[[step]]\nrun = "echo ok > /ok"\n[[step]]\nrun = "echo fixed"\n');
    const again = await h.ok(['build', '-f', fixed]);
    assert.match(again.stderr, /\[1\/2\] CACHED/);
    assert.equal(again.stdout, 'fixed\n');
  });

  test('a detached step: a server that backgrounds itself is waited for; one that exits non-zero fails at once', async () => {
    // The shell exits 0 at once and the server listens two seconds later, as a daemonizing one does.
    const daemonizing = writeBuild(
      'daemon.toml',
      'base = "busybox"\n[[step]]\nrun = "mkdir -p /www && echo daemon-page > /www/index.html && (sleep 2; httpd -p 8082 -h /www) &"\ndetach = true\nready = "wget -q -O /dev/null http://127.0.0.1:8082/"\n',
    );
    await h.ok(['build', '-f', daemonizing, '-t', 'daemon']);
    const page = await h.ok(['run', '--rm', '--from', 'daemon', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8082/']);
    assert.equal(page.stdout, 'daemon-page\n', 'the server runs in the result');
    const crashing = writeBuild('crash.toml', 'base = "busybox"\n[[step]]\nrun = "echo bad config >&2; exit 3"\ndetach = true\nready = "false"\nready_timeout = 120\n');
    const r = await h.cell(['build', '-f', crashing]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /error: the service exited with code 3 before the ready check passed \(last attempt exited 1\)\n$/);
    assert.doesNotMatch(r.stderr, /within 120 s/, 'not after the whole timeout');
  });

  test('copy steps put host files in the guest; a changed file misses, a touched one does not', async () => {
    const ctx = join(dir, 'ctx');
    mkdirSync(join(ctx, 'site', 'sub'), { recursive: true });
    writeFileSync(join(ctx, 'site', 'index.html'), '<h1>v1</h1>\n');
    writeFileSync(join(ctx, 'site', 'sub', 'a.txt'), 'alpha\n');
    writeFileSync(join(ctx, 'tool.sh'), '#!/bin/sh\necho tool ran\n', { mode: 0o755 });
    const file = join(ctx, 'build.toml');
    writeFileSync(
      file,
      'base = "busybox"\n[[step]]\ncopy = "site"\nto = "/www"\n[[step]]\ncopy = "tool.sh"\nto = "/usr/local/bin/"\n[[step]]\nrun = "cat /www/index.html /www/sub/a.txt; tool.sh; stat -c %a /"\n',
    );
    const first = await h.ok(['build', '-f', file, '-t', 'site']);
    assert.equal(first.stdout, '<h1>v1</h1>\nalpha\ntool ran\n755\n', 'files in place, the script executable, / untouched');
    assert.match(first.stderr, new RegExp(`\\[1/3\\] COPY ${ctx}/site -> /www`));

    writeFileSync(join(ctx, 'site', 'sub', 'a.txt'), 'alpha\n'); // same content, new mtime
    const touched = await h.ok(['build', '-f', file]);
    assert.equal((touched.stderr.match(/CACHED/g) ?? []).length, 3, 'content, not times, decides');

    writeFileSync(join(ctx, 'site', 'sub', 'a.txt'), 'beta\n');
    const changed = await h.ok(['build', '-f', file, '-t', 'site']);
    assert.doesNotMatch(changed.stderr, /CACHED/, 'the changed copy step and all after it ran');
    assert.equal(changed.stdout, '<h1>v1</h1>\nbeta\ntool ran\n755\n');
  });

  test('cached actions: a hit returns the same snapshot and runs nothing; cmd and env changes miss', async () => {
    const action = { image: 'busybox', cmd: ['sh', '-c', 'cat /proc/sys/kernel/random/uuid | tee /id'], env: ['MODE=1'], cache: true };
    let out = '';
    const first = await client.actions.run(action, { onStdout: (c) => void (out += c.toString()) });
    assert.equal(first.cached, false);
    assert.equal(first.exitCode, 0);
    assert.ok(first.snapshot && first.key);
    let again = '';
    const hit = await client.actions.run(action, { onStdout: (c) => void (again += c.toString()) });
    assert.deepEqual([hit.cached, hit.snapshot?.id, hit.key, again], [true, first.snapshot.id, first.key, '']);
    const stored = (await h.ok(['run', '--rm', '--from', first.snapshot.id, '--', 'cat', '/id'])).stdout;
    assert.equal(stored, out, 'the snapshot holds what the one real run wrote');

    const otherEnv = await client.actions.run({ ...action, env: ['MODE=2'] });
    const otherCmd = await client.actions.run({ ...action, cmd: ['sh', '-c', 'cat /proc/sys/kernel/random/uuid > /id'] });
    for (const miss of [otherEnv, otherCmd]) {
      assert.equal(miss.cached, false);
      assert.notEqual(miss.key, first.key);
      assert.notEqual(miss.snapshot?.id, first.snapshot.id);
    }
    const failed = await client.actions.run({ ...action, cmd: ['sh', '-c', 'exit 3'] });
    assert.deepEqual([failed.exitCode, failed.snapshot, failed.cached], [3, null, false]);
    const retried = await client.actions.run({ ...action, cmd: ['sh', '-c', 'exit 3'] });
    assert.equal(retried.cached, false, 'a failed action was not cached');
  });

  test('sibling actions from one parent at once each get their own snapshot; identical ones run once', async () => {
    const parent = (await client.actions.run({ image: 'busybox', cmd: ['sh', '-c', 'echo parent > /who'], cache: true })).snapshot!;
    const sibling = (name: string) => client.actions.run({ fromSnapshot: parent.id, cmd: ['sh', '-c', `echo ${name} > /who; sleep 0.3`], cache: true });
    const [a, b] = await Promise.all([sibling('a'), sibling('b')]);
    assert.notEqual(a.snapshot!.id, b.snapshot!.id);
    const who = async (id: string) => (await h.ok(['run', '--rm', '--from', id, '--', 'cat', '/who'])).stdout;
    assert.deepEqual([await who(a.snapshot!.id), await who(b.snapshot!.id), await who(parent.id)], ['a\n', 'b\n', 'parent\n']);

    let runs = 0;
    const same = () =>
      client.actions.run(
        { fromSnapshot: parent.id, cmd: ['sh', '-c', 'echo ran; cat /proc/sys/kernel/random/uuid > /id'], cache: true },
        { onStdout: () => void runs++ },
      );
    const [x, y] = await Promise.all([same(), same()]);
    assert.equal(x.snapshot!.id, y.snapshot!.id, 'both got the one cached snapshot');
    assert.deepEqual([x.cached, y.cached].sort(), [false, true]);
    assert.equal(runs, 1, 'the command ran once');
  });

  test('cache ls lists entries; prune refuses nothing it must keep and removes the rest', async () => {
    const list = JSON.parse((await h.ok(['cache', 'ls', '--format', 'json'])).stdout) as CacheJson[];
    assert.ok(list.length >= 5);
    const table = await h.ok(['cache', 'ls']);
    assert.match(table.stdout, /^KEY\s+SNAPSHOT\s+SIZE\s+HITS\s+LAST USED\s+WHAT/);
    const snapshots = await client.snapshots.list();
    const held = list.find((e) => !snapshots.some((s) => s.parentSnapshot === e.snapshotId))!;
    const rm = await h.cell(['snapshot', 'rm', held.snapshotId]);
    assert.notEqual(rm.code, 0);
    assert.match(rm.stderr, /held by cache entry/);
    assert.equal((await h.ok(['cache', 'prune', '--older-than', '1h'])).stdout, '', 'everything was used within the hour');
    assert.equal((await h.ok(['cache', 'prune', '--max-bytes', '1T'])).stdout, '', 'everything fits in a terabyte');
    const pruned = await h.ok(['cache', 'prune', '--max-count', '0']);
    assert.ok(pruned.stdout.split('\n').filter(Boolean).length >= list.length - 1);
    const rest = JSON.parse((await h.ok(['cache', 'ls', '--format', 'json'])).stdout) as CacheJson[];
    assert.deepEqual(rest, [], 'every entry went, later steps before the ones they grew from');
    const bad = await h.cell(['cache', 'prune', '--max-bytes', 'lots']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--max-bytes must be a size like 500M/);
  });

  test('bad build files are refused with the line, before anything boots', async () => {
    const file = writeBuild('bad.toml', 'base = "busybox"\n\n[[step]]\nrun = "true"\nrnu = "typo"\n');
    const r = await h.cell(['build', '-f', file]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'error: bad.toml:5: unknown key "rnu" in a run step (expected one of: run, name, from, timeout, detach, ready, ready_timeout, user)\n');
    const missing = await h.cell(['build', '-f', join(dir, 'nope.toml')]);
    assert.match(missing.stderr, /^error: the build file .*nope\.toml \(host\): no such file or directory/);
  });
});

// A change of the base image (same tag, new content in the registry) misses the cache.
describe('builds on a pulled image', () => {
  let registry: RunningRegistry;
  let h: TestHome;
  let src: string;
  let dir: string;
  before(async () => {
    registry = await startRegistry();
    h = new TestHome();
    src = mkdtempSync('/tmp/cellt-src-');
    dir = mkdtempSync('/tmp/cellt-build-');
  });
  after(async () => {
    await h.cleanup();
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  async function publish(ref: string, version: string): Promise<void> {
    const root = mkdtempSync('/tmp/cellt-root-');
    try {
      mkdirSync(join(root, 'bin'));
      copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
      for (const applet of ['sh', 'cat', 'echo', 'tee']) symlinkSync('busybox', join(root, 'bin', applet));
      const base = tarOfTree({ 'etc/version': version, 'proc/': { dir: true }, 'sys/': { dir: true }, 'dev/': { dir: true }, 'tmp/': { dir: true } });
      const bin = execFileSync('tar', ['-cf', '-', '--numeric-owner', '-C', root, 'bin'], { maxBuffer: 64 * 1024 * 1024 });
      const image = await storeImage(src, { layers: [{ tar: base, compression: 'gzip' }, { tar: bin, compression: 'gzip' }], config: { Env: ['PATH=/bin'] } });
      await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }

  test('the same build on a re-pushed tag runs again', async () => {
    const ref = `127.0.0.1:${registry.port}/e2e/base:v1`;
    await publish(ref, 'one');
    const file = join(dir, 'build.toml');
    writeFileSync(file, `base = "${ref}"\n[[step]]\nrun = "cat /etc/version"\n`);
    const first = await h.ok(['build', '-f', file]);
    assert.equal(first.stdout, 'one');
    const hit = await h.ok(['build', '-f', file]);
    assert.match(hit.stderr, /CACHED/);
    await publish(ref, 'two');
    await h.ok(['pull', ref]);
    const miss = await h.ok(['build', '-f', file]);
    assert.equal(miss.stdout, 'two', 'the new image content ran: the old cache entry did not match');
  });
});
