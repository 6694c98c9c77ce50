import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { ensureAgent } from '../../src/host/agent-build.js';
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
