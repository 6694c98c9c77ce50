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
