/**
 * What a guest wrote (serial console, QEMU's log, celld's log, a ready check's output) reaches
 * error messages and users' terminals without escape sequences or control characters.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import { cellPaths } from '../../src/domain/paths.js';
import { stripControl } from '../../src/domain/terminal-text.js';
import type { Engine } from '../../src/engine/engine.js';
import { daemonStartFailed } from '../../src/sdk/daemon.js';
import { buildApp } from '../../src/server/app.js';
import { QemuBackend } from '../../src/vmm/qemu/backend.js';

const tmp = mkdtempSync('/tmp/cell-ctl-');
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A hostile console: clear screen, cursor home, a fake prompt in colour, a window title, a bell, 8-bit CSI, a carriage return overwrite. */
const HOSTILE = '\x1b[2J\x1b[H\x1b[31mKernel panic\x1b[0m\x1b]0;owned\x07 ok\x9b1;1Hdone\r\x08\x00\x7fend\tof line\n';
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;

test('stripControl removes CSI, OSC and 8-bit sequences and C0/C1 controls, keeps text, newlines, tabs and Unicode', () => {
  assert.equal(stripControl(HOSTILE), 'Kernel panic okdoneend\tof line\n');
  assert.equal(stripControl('héllo 日本 ✓\n'), 'héllo 日本 ✓\n');
  assert.equal(stripControl('\x1bP1;2|secret\x1b\\after'), 'after', 'a DCS string goes whole');
  assert.equal(stripControl('a\x1b'), 'a', 'a lone ESC at the end');
});

function vmDirWithLogs(name: string): string {
  const dir = join(tmp, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'serial.log'), `[    0.1] booting\n${HOSTILE}`);
  writeFileSync(join(dir, 'qemu.log'), `qemu-system-x86_64: \x1b]2;title\x07could not map RAM\x1b[1A\n`);
  return dir;
}

test("a boot failure's message, serial tail and QEMU log tail carry no control sequences", () => {
  const backend = new QemuBackend();
  const dir = vmDirWithLogs('boot');
  const err = backend.bootFailure({ dir }, backend.files(dir), 'agent said \x1b[2Jhi');
  assert.equal(err.code, ErrorCodes.BOOT_FAILED);
  assert.equal(err.message, 'VM failed to boot: agent said hi; qemu: qemu-system-x86_64: could not map RAM');
  assert.equal(err.details?.serialTail, '[    0.1] booting\nKernel panic okdoneend\tof line');
  assert.doesNotMatch(String(err.details?.qemuLog), CONTROL);
  assert.doesNotMatch(backend.serialTail(dir), CONTROL);
});

test("celld's log tail in the 'celld did not start' error carries no control sequences", () => {
  const home = join(tmp, 'home');
  mkdirSync(home);
  const paths = cellPaths(home, {});
  writeFileSync(paths.daemonLog, `started\ncelld: \x1b[31mrefusing\x1b[0m \x1b]0;x\x07to start\n`);
  const err = daemonStartFailed(paths, 'the socket did not answer');
  assert.match(err.message, /last log line: celld: refusing to start$/);
  assert.doesNotMatch(err.message, CONTROL);
  assert.doesNotMatch(String(err.details?.logTail), CONTROL);
});

test("celld's error replies carry no control sequences in the message or string details", async () => {
  const engine = new Proxy(
    {
      vms: {
        inspect: async () => {
          throw new CellError(ErrorCodes.READY_CHECK_FAILED, 'the ready check did not pass (last attempt exited 1: \x1b]0;owned\x07\x1b[2Jnope)', {
            serialTail: HOSTILE,
            attempts: 3,
          });
        },
      },
    },
    { get: (target, name) => (target as Record<string | symbol, unknown>)[name] },
  ) as unknown as Engine;
  const app = buildApp(engine);
  const res = await app.inject({ method: 'GET', url: '/v1/vms/box' });
  assert.deepEqual(res.json(), {
    error: {
      code: 'ready_check_failed',
      message: 'the ready check did not pass (last attempt exited 1: nope)',
      details: { serialTail: 'Kernel panic okdoneend\tof line\n', attempts: 3 },
    },
  });
  await app.close();
});
