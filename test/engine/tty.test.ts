/**
 * An exec on a pseudo-terminal through the engine, on the fake backend (the real agent in --stdio
 * mode runs the command on this host's pty): size, resize, ^C, one output stream, exit code.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { CellError } from '../../src/domain/errors.js';
import { ExecTerminal } from '../../src/engine/exec-terminal.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
before(async () => {
  fake = await openFakeEngine();
});
after(async () => {
  await fake?.cleanup();
});

async function until(cond: () => boolean, what: string, screen: () => string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; screen: ${JSON.stringify(screen())}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('exec on a terminal: its size, a resize, ^C to the foreground process, one stream, the exit code', async () => {
  const { engine } = fake;
  const vm = await engine.vms.start((await engine.vms.create({ image: 'busybox', name: 'tty' })).id);
  const out: Buffer[] = [];
  let stderrBytes = 0;
  const screen = () => Buffer.concat(out).toString();
  const stdin = new PassThrough();
  // A resize before the exec runs is kept and sent once it does.
  const terminal = new ExecTerminal({ rows: 24, cols: 80 });
  const run = engine.vms.exec(
    vm.id,
    { cmd: ['/bin/sh'], env: ['PS1=$ '], stdin, terminal },
    { stdout: (c) => out.push(c), stderr: (c) => (stderrBytes += c.length) },
  );
  stdin.write('stty size; echo "T=$TERM"; echo to-stderr >&2\n');
  await until(() => /24 80\r\n/.test(screen()) && /T=xterm-256color\r\n/.test(screen()) && /to-stderr\r\n/.test(screen()), 'size, TERM and stderr', screen);
  assert.equal(stderrBytes, 0, 'stderr comes on the terminal: one stream');

  await terminal.resize({ rows: 30, cols: 100 });
  stdin.write('stty size\n');
  await until(() => /30 100\r\n/.test(screen()), 'the new size', screen);
  await assert.rejects(terminal.resize({ rows: 0, cols: 100 }), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument');

  stdin.write('sleep 30\n');
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  stdin.write('\x03');
  stdin.write('echo status=$?\n');
  await until(() => /status=130/.test(screen()), '^C interrupting sleep', screen);
  assert.ok(Date.now() - t0 < 3000, `interrupted after ${Date.now() - t0} ms`);

  stdin.write('exit 3\n');
  const result = await run;
  assert.equal(result.exitCode, 3);
  await engine.vms.remove(vm.id, true);
});
