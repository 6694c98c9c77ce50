import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { TestHome } from '../helpers/cell-home.js';

/** Bad input: one clear line on stderr, a non-zero exit, and nothing left behind. */
describe('bad input', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
  });

  async function assertNothingLeft(): Promise<void> {
    const ps = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as unknown[];
    assert.deepEqual(ps, [], 'no VM record is left');
    assert.deepEqual(readdirSync(join(h.home, 'vms')), [], 'no VM directory is left');
    assert.deepEqual(h.qemuPids(), [], 'no QEMU is left');
  }

  const cases: [string, string[], RegExp][] = [
    // A registry on loopback that is not there: the pull fails fast (tests never leave loopback).
    ['image from an unreachable registry', ['run', '127.0.0.1:59999/no-such-image', '--', 'true'], /cannot reach 127\.0\.0\.1:59999.*ECONNREFUSED/],
    ['--memory 0', ['run', '--memory', '0', 'busybox', '--', 'true'], /--memory 0 is out of range/],
    ['--cpus 999', ['run', '--cpus', '999', 'busybox', '--', 'true'], /--cpus 999 is out of range/],
    ['--memory not a number', ['run', '--memory', 'lots', 'busybox', '--', 'true'], /--memory/],
    ['bad env', ['run', '-e', 'NOEQUALS', 'busybox', '--', 'true'], /KEY=VALUE/],
    ['bad name', ['run', '--name', '../evil', 'busybox', '--', 'true'], /invalid name/],
    ['unknown ref for stop', ['stop', 'ghost'], /no such VM: ghost/],
    ['unknown ref for rm', ['rm', 'ghost'], /no such VM: ghost/],
    ['unknown flag', ['run', '--frobnicate', 'busybox'], /unknown option/],
    ['the dashboard without a TCP listener', ['ui'], /celld serves no TCP listener.*--listen 127\.0\.0\.1:7070/],
  ];
  for (const [what, args, message] of cases) {
    test(`${what}: clear error, nothing left`, async () => {
      const r = await h.cell(args);
      assert.notEqual(r.code, 0, `exit code for ${what}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.equal(r.stdout, '');
      await assertNothingLeft();
    });
  }

  test('a duplicate name is refused', async () => {
    await h.ok(['run', '--name', 'twin', 'busybox', '--', 'true']);
    const r = await h.cell(['run', '--name', 'twin', 'busybox', '--', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /name "twin" is already in use/);
    await h.ok(['rm', 'twin']);
    await assertNothingLeft();
  });

  test('exec in a stopped VM says it is not running', async () => {
    await h.ok(['run', '--name', 'idle', 'busybox', '--', 'true']);
    const r = await h.cell(['exec', 'idle', '--', 'true']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not running/);
    await h.ok(['rm', 'idle']);
  });
});

describe('a VM that fails to boot', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
  });

  test('is reported with the serial console tail and leaves nothing behind', async () => {
    // An image whose disk holds no file system: the guest cannot mount its root and powers off.
    await h.ok(['images']);
    const disk = join(h.home, 'broken.img');
    writeFileSync(disk, Buffer.alloc(8 * 1024 * 1024));
    const db = new Database(join(h.home, 'cell.db'));
    db.prepare(
      `INSERT INTO images (reference, digest, disk_path, size_bytes, config, builtin, created_at)
       VALUES ('broken', 'sha256:0', ?, ?, '{"Cmd":["true"]}', 0, ?)`,
    ).run(disk, 8 * 1024 * 1024, new Date().toISOString());
    db.close();

    const r = await h.cell(['run', 'broken']);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr.split('\n')[0]!, /^error: VM failed to boot/);
    assert.match(r.stderr, /serial console/);
    assert.match(r.stderr, /vda|root/i, 'the serial tail says what went wrong');
    const ps = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as unknown[];
    assert.deepEqual(ps, []);
    assert.deepEqual(readdirSync(join(h.home, 'vms')), []);
    assert.deepEqual(h.qemuPids(), []);
  });

});

describe('a boot that misses its deadline', () => {
  let h: TestHome;
  before(() => {
    // celld reads the deadline from its environment; no guest boots in 0.3 s under emulation.
    h = new TestHome({ CELL_BOOT_TIMEOUT: '0.3' });
  });
  after(async () => {
    await h.cleanup();
  });

  test('fails with a clear error naming the deadline and leaves nothing', async () => {
    const r = await h.cell(['run', 'busybox', '--', 'true']);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr.split('\n')[0]!, /^error: VM failed to boot: the guest agent did not answer within 0.3 s/);
    const ps = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as unknown[];
    assert.deepEqual(ps, []);
    assert.deepEqual(h.qemuPids(), []);
  });
});

describe('a guest that runs out of memory', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
  });

  // Before the fix, TCG's code cache grew past the QEMU's cgroup limit while the guest was short
  // of memory, and the host killed the whole VM: the exec failed with "the connection to the guest
  // agent closed" and the VM was stopped. Now the guest's OOM killer ends the hog, alone.
  test("the guest's OOM killer ends the hog (137, oom events with its name); the VM and its agent go on", async () => {
    const start = new Date();
    await h.ok(['run', '-d', '--name', 'hog', '--memory', '128', 'busybox']);
    const [pid] = h.qemuPids();
    // One allocation of 90% of the guest's memory, touched at once by read(): the kernel's OOM
    // killer acts at once.
    const dd = await h.cell(['exec', 'hog', '--', 'sh', '-c', 'm=$(awk \'/MemTotal/{print int($2*0.9)}\' /proc/meminfo); exec dd if=/dev/zero of=/dev/null bs=${m}k count=1'], { timeoutMs: 60_000 });
    assert.equal(dd.code, 137, `exit code (stderr: ${dd.stderr})`);
    assert.match(dd.stderr, /killed by the guest's OOM killer/);
    // The report's own case: a hog that grows slowly makes the guest thrash (it re-reads its code
    // pages) rather than meet the OOM killer, for minutes; the agent's valve (PSI, 10 s) ends it.
    const started = Date.now();
    const sort = await h.cell(['exec', 'hog', '--', 'sh', '-c', 'head -c 100000000 /dev/zero | sort > /dev/null; echo exit=$?'], { timeoutMs: 90_000 });
    assert.equal(sort.code, 0, `sh itself goes on (stderr: ${sort.stderr})`);
    assert.equal(sort.stdout, 'exit=137\n');
    const sortMs = Date.now() - started;
    const alive = await h.ok(['exec', 'hog', '--', 'echo', 'alive']);
    assert.equal(alive.stdout, 'alive\n');
    assert.deepEqual(h.qemuPids(), [pid], 'the same QEMU runs on');
    const events = (await h.ok(['events', '--since', start.toISOString(), '--until', new Date().toISOString(), '--filter', 'vm=hog', '--filter', 'event=oom', '--format', 'json'])).stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { action: string; actor: { name: string }; attributes: Record<string, string> });
    assert.deepEqual(events.map((e) => [e.actor.name, e.attributes.process]), [['hog', 'dd'], ['hog', 'sort']], JSON.stringify(events));
    for (const e of events) assert.match(e.attributes.pid!, /^[1-9][0-9]*$/);
    const ps = JSON.parse((await h.ok(['ps', '--format', 'json'])).stdout) as { name: string; state: string }[];
    assert.equal(ps.find((v) => v.name === 'hog')?.state, 'running');
    await h.ok(['rm', '-f', 'hog']);
    console.log(`# sort hog ended after ${(sortMs / 1000).toFixed(1)} s`);
  });
});
