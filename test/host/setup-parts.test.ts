import { describe, it, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { ensureAgent } from '../../src/host/agent-build.js';
import { aptDownload } from '../../src/host/apt.js';
import { makeWorkDir } from '../../src/host/files.js';
import { ensureKernel } from '../../src/host/kernel.js';
import { run } from '../../src/host/exec.js';
import { ensureHostPackages } from '../../src/host/packages.js';
import { acquireSetupLock } from '../../src/host/setup-lock.js';

/** The set-up's failure paths and lock, without downloads or VMs. */
const tmp = mkdtempSync('/tmp/cell-host-parts-');
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('run', () => {
  it('turns a failing command into SETUP_FAILED with the command and its stderr tail', async () => {
    await assert.rejects(run('sh', ['-c', 'echo first >&2; echo the reason >&2; exit 3']), (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'setup_failed');
      assert.match(err.message, /^sh -c .* exited 3: first \| the reason$/);
      return true;
    });
  });

  it('reports a command that does not exist as a missing host dependency', async () => {
    await assert.rejects(run('cell-no-such-command', []), { code: 'host_missing_dependency' });
  });
});

describe('ensureHostPackages', () => {
  const missing = [{ what: 'frobnicate', package: 'frob-utils', present: async () => false }];

  it('names the missing packages and the command to install them when it may not install', async () => {
    await assert.rejects(ensureHostPackages({ install: false, requirements: missing }), (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'host_missing_dependency');
      assert.equal(err.message, 'missing host packages: frob-utils (run: sudo apt-get install frob-utils)');
      return true;
    });
  });

  it('reports cached when everything is present', async () => {
    const events: unknown[] = [];
    await ensureHostPackages({ install: false, onProgress: (e) => events.push(e) });
    assert.deepEqual(events, [{ step: 'host packages', status: 'cached', detail: 'all present' }]);
  });
});

describe('ensureAgent', () => {
  it('fails with the compiler error and leaves nothing in the cache', async () => {
    const cacheDir = join(tmp, 'agent-cache');
    const source = mkdtempSync(join(tmp, 'guest-'));
    writeFileSync(join(source, 'broken.c'), 'int main(void) { return undeclared_thing; }\n');
    await assert.rejects(ensureAgent({ cacheDir, source }), (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'setup_failed');
      assert.match(err.message, /gcc .* exited 1: .*undeclared_thing/);
      return true;
    });
    assert.equal(existsSync(join(cacheDir, 'agent')), false);
    assert.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  });
});

describe('acquireSetupLock', () => {
  it('breaks a lock whose owner is dead', async () => {
    const dir = mkdtempSync(join(tmp, 'lock-'));
    // A pid that surely is not running: a child that already exited.
    const dead = spawnSync('true').pid!;
    writeFileSync(join(dir, 'setup.lock'), JSON.stringify({ pid: dead, start: '1' }));
    const release = await acquireSetupLock(dir, { timeoutMs: 2000 });
    await release();
    assert.equal(existsSync(join(dir, 'setup.lock')), false);
  });

  it('waits for a live owner and times out with who holds it', async () => {
    const dir = mkdtempSync(join(tmp, 'lock-'));
    const release = await acquireSetupLock(dir);
    const events: unknown[] = [];
    await assert.rejects(acquireSetupLock(dir, { timeoutMs: 300, onProgress: (e) => events.push(e) }), {
      code: 'setup_failed',
      message: new RegExp(`process ${process.pid}`),
    });
    assert.deepEqual(events, [{ step: 'lock', status: 'start', detail: `waiting for the set-up running in process ${process.pid}` }]);
    await release();
    const again = await acquireSetupLock(dir, { timeoutMs: 1000 });
    await again();
  });
});

/**
 * Root unpacks the kernel .deb apt downloads: nobody else may be able to swap it. Fake apt-get and
 * apt-cache record where and how they were run.
 */
describe('kernel .deb downloads', () => {
  const bin = join(tmp, 'fake-apt');
  const log = join(tmp, 'fake-apt.log');
  const savedPath = process.env.PATH;
  before(() => {
    mkdirSync(bin);
    writeFileSync(
      join(bin, 'apt-get'),
      `#!/bin/sh
echo "$* | $(stat -c %a .) $(stat -c %a ..)" >> "$FAKE_APT_LOG"
[ -n "$FAKE_APT_FAIL" ] && { echo "E: fake failure" >&2; exit 100; }
for a; do case "$a" in *=*) pkg=\${a%%=*}; ver=\${a#*=};; esac; done
printf 'deb of %s\n' "$pkg" > "\${pkg}_\${ver}_amd64.deb"
`,
      { mode: 0o755 },
    );
    writeFileSync(
      join(bin, 'apt-cache'),
      `#!/bin/sh
for a; do last=$a; done
pkg=\${last%%=*}
printf 'Package: %s\nVersion: 1.0\nSHA256: %s\n' "$pkg" "\${FAKE_APT_SHA:-$(printf 'deb of %s\n' "$pkg" | sha256sum | cut -d' ' -f1)}"
`,
      { mode: 0o755 },
    );
    process.env.PATH = `${bin}:${savedPath}`;
    process.env.FAKE_APT_LOG = log;
  });
  after(() => {
    process.env.PATH = savedPath;
    delete process.env.FAKE_APT_FAIL;
    delete process.env.FAKE_APT_SHA;
  });
  const calls = () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []);

  it('downloads as root into the private folder it is given, which stays 0700', async () => {
    rmSync(log, { force: true });
    const dir = mkdtempSync(join(tmp, 'debs-'));
    const deb = await aptDownload('linux-image-6.1.0-99-cloud-amd64', '6.1.99-1', dir);
    assert.equal(deb, join(dir, 'linux-image-6.1.0-99-cloud-amd64_6.1.99-1_amd64.deb'));
    assert.equal(calls().length, 1);
    assert.match(calls()[0]!, /^download -q -o APT::Sandbox::User=root linux-image-6\.1\.0-99-cloud-amd64=6\.1\.99-1 \| 700 /);
    assert.equal((statSync(dir).mode & 0o777).toString(8), '700');
  });

  it('refuses a download folder others may write to, before apt runs', async () => {
    rmSync(log, { force: true });
    const dir = mkdtempSync(join(tmp, 'debs-'));
    chmodSync(dir, 0o777);
    await assert.rejects(aptDownload('linux-image-cloud-amd64', '1.0', dir), (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'setup_failed');
      assert.equal(err.message, `refusing to use the download folder ${dir}: other users may write to it (group or world write bits) (owner uid 0, mode 0777); remove it or, if it is yours, make it private (chown 0 and chmod 700 it)`);
      return true;
    });
    assert.deepEqual(calls(), []);
  });

  it("does not use a .deb that does not match apt's index", async () => {
    process.env.FAKE_APT_SHA = 'a'.repeat(64);
    try {
      const dir = mkdtempSync(join(tmp, 'debs-'));
      await assert.rejects(aptDownload('linux-image-cloud-amd64', '1.0', dir), (err: unknown) => {
        assert.ok(err instanceof CellError);
        assert.equal(err.code, 'digest_mismatch');
        assert.match(err.message, /^linux-image-cloud-amd64_1\.0_amd64\.deb does not match apt's index \(sha256 [0-9a-f]{64}, expected a{64}\): not using it$/);
        return true;
      });
    } finally {
      delete process.env.FAKE_APT_SHA;
    }
  });

  it("the kernel set-up downloads into a 0700 folder inside a 0700 work folder", async () => {
    rmSync(log, { force: true });
    process.env.FAKE_APT_FAIL = '1';
    try {
      await assert.rejects(ensureKernel({ cacheDir: join(tmp, 'kernel-cache'), mayUpdateApt: false }), { code: 'setup_failed', message: /E: fake failure/ });
    } finally {
      delete process.env.FAKE_APT_FAIL;
    }
    assert.equal(calls().length, 1);
    assert.match(calls()[0]!, /\| 700 700$/, 'debs/ and the work folder around it');
  });

  it("refuses a cache whose tmp folder is another user's (they could swap the work folder)", async () => {
    const cacheDir = join(tmp, 'shared-cache');
    mkdirSync(join(cacheDir, 'tmp'), { recursive: true });
    chownSync(join(cacheDir, 'tmp'), 65534, 65534);
    await assert.rejects(makeWorkDir(cacheDir, 'kernel'), { code: 'setup_failed', message: /^refusing to use the host cache .*\/tmp: it is owned by another user/ });
    assert.deepEqual(readdirSync(join(cacheDir, 'tmp')), []);
  });
});
