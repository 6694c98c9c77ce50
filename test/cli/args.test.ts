import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { register as registerRun, toVmSpec, withoutSeparator, type RunFlags } from '../../src/cli/commands/run.js';
import { register as registerExec, toExecSpec, type ExecFlags } from '../../src/cli/commands/exec.js';
import { seconds, UsageError, wholeNumber } from '../../src/cli/errors.js';
import { hostSize, rawTerminal, type HostTty } from '../../src/cli/terminal.js';

/** Parses a `cell` command line with the real option definitions, capturing what the action gets. */
function parse(argv: string[]): { operands: string[]; flags: Record<string, unknown> } {
  const program = new Command('cell').enablePositionalOptions().exitOverride();
  registerRun(program);
  registerExec(program);
  let captured: { operands: string[]; flags: Record<string, unknown> } | undefined;
  for (const cmd of program.commands) {
    cmd.exitOverride().action((...args: unknown[]) => {
      const flags = args.at(-2) as Record<string, unknown>;
      const operands = args.slice(0, -2).flatMap((a) => (a === undefined ? [] : Array.isArray(a) ? (a as string[]) : [a as string]));
      captured = { operands, flags };
    });
  }
  program.parse(argv, { from: 'user' });
  assert.ok(captured, 'the action ran');
  return captured;
}

function runRequest(argv: string[]) {
  const { operands, flags } = parse(['run', ...argv]);
  return toVmSpec(operands, flags as RunFlags);
}

test('run: image, then the command verbatim, with or without --', () => {
  assert.deepEqual(toVmSpec(['busybox', '--', 'ls', '-la'], {}), { image: 'busybox', cmd: ['ls', '-la'] });
  assert.deepEqual(toVmSpec(['busybox', 'ls', '-la'], {}), { image: 'busybox', cmd: ['ls', '-la'] });
  assert.deepEqual(toVmSpec(['busybox'], {}), { image: 'busybox', cmd: [] });
});

test('run: flags become request fields, -e repeats', () => {
  const req = toVmSpec(['busybox', 'true'], { name: 'n', cpus: 2, memory: 512, env: ['A=1', 'B=2'], workdir: '/tmp', user: '1000', timeout: 1.5, rm: true });
  assert.deepEqual(req, { image: 'busybox', cmd: ['true'], name: 'n', cpus: 2, memoryMib: 512, env: ['A=1', 'B=2'], workingDir: '/tmp', user: '1000', commandTimeoutMs: 1500, autoRemove: true });
});

test('run: I/O limit flags take sizes and become one limits object', () => {
  assert.deepEqual(runRequest(['--disk-bps', '20M', '--disk-iops', '300', '--rng-bps', '4K', 'busybox']).limits, {
    diskIops: 300,
    diskBytesPerSec: 20 * 1024 * 1024,
    rngBytesPerSec: 4096,
  });
  assert.equal(runRequest(['busybox']).limits, undefined);
});

test('run --from: every operand is the command', () => {
  assert.deepEqual(toVmSpec(['--', 'cat', '/etc/hostname'], { from: 'warm' }), { fromSnapshot: 'warm', cmd: ['cat', '/etc/hostname'] });
});

test('run without an image is a usage error', () => {
  assert.throws(() => toVmSpec([], {}), (err: unknown) => err instanceof UsageError && /an image is required/.test(err.message));
});

test('only a leading -- is a separator', () => {
  assert.deepEqual(withoutSeparator(['--', 'echo', '--']), ['echo', '--']);
  assert.deepEqual(withoutSeparator(['echo', '--']), ['echo', '--']);
});

test('commander: options stop at the image, so the command keeps its own flags', () => {
  assert.deepEqual(runRequest(['busybox', 'ls', '-la']), { image: 'busybox', cmd: ['ls', '-la'] });
  assert.deepEqual(runRequest(['--rm', 'busybox', 'sh', '-c', 'echo --rm -d']), { image: 'busybox', cmd: ['sh', '-c', 'echo --rm -d'], autoRemove: true });
  assert.deepEqual(runRequest(['-d', 'busybox', '--', '--name', 'x']), { image: 'busybox', cmd: ['--name', 'x'] });
  assert.deepEqual(runRequest(['busybox', '--rm']), { image: 'busybox', cmd: ['--rm'] }, 'a flag after the image belongs to the command');
});

test('commander: -e repeats, numbers are parsed, defaults stay unset', () => {
  assert.deepEqual(runRequest(['-e', 'A=1', '--env', 'B=2', '--cpus', '2', '--memory', '512', '--timeout', '2.5', '-w', '/srv', '-u', 'nobody', '--name', 'n', 'busybox', 'env']), {
    image: 'busybox',
    cmd: ['env'],
    env: ['A=1', 'B=2'],
    cpus: 2,
    memoryMib: 512,
    commandTimeoutMs: 2500,
    workingDir: '/srv',
    user: 'nobody',
    name: 'n',
  });
  assert.deepEqual(runRequest(['busybox']), { image: 'busybox', cmd: [] });
});

test('commander: bad numbers are usage errors with the flag in the message', () => {
  assert.throws(() => runRequest(['--memory', 'abc', 'busybox']), { name: 'UsageError', message: '--memory must be a whole number of MiB, not "abc"' });
  assert.throws(() => runRequest(['--cpus', '1.5', 'busybox']), { name: 'UsageError', message: '--cpus must be a whole number, not "1.5"' });
  assert.throws(() => runRequest(['--timeout', 'soon', 'busybox']), { name: 'UsageError', message: '--timeout must be a number of seconds, not "soon"' });
  // Ranges are the daemon's business: 0 parses fine here.
  assert.deepEqual(runRequest(['--memory', '0', 'busybox']), { image: 'busybox', cmd: [], memoryMib: 0 });
});

test('number parsers', () => {
  assert.equal(wholeNumber('--count')('12'), 12);
  assert.throws(() => wholeNumber('--count')('-1'), UsageError);
  assert.throws(() => wholeNumber('--count')(''), UsageError);
  assert.equal(seconds('--time')('0'), 0);
  assert.equal(seconds('--time')('0.25'), 0.25);
  assert.throws(() => seconds('--time')('1e3'), UsageError);
});

test('exec: the VM, then the command verbatim; flags map to the request', () => {
  const { operands, flags } = parse(['exec', '-e', 'A=1', '-w', '/tmp', '-u', '0', '--timeout', '3', '-i', 'box', 'ls', '-la']);
  assert.equal(operands[0], 'box');
  assert.equal(flags.interactive, true);
  assert.deepEqual(toExecSpec(operands.slice(1), flags as unknown as ExecFlags), { cmd: ['ls', '-la'], env: ['A=1'], workingDir: '/tmp', user: '0', commandTimeoutMs: 3000 });
  const sep = parse(['exec', 'box', '--', 'sh', '-c', 'exit 3']);
  assert.deepEqual(toExecSpec(sep.operands.slice(1), sep.flags as unknown as ExecFlags), { cmd: ['sh', '-c', 'exit 3'] });
  assert.throws(() => toExecSpec(['--'], {}), UsageError);
});

test('exec -it: a tty of the host terminal\'s size; -it without a terminal is docker\'s error; -t alone works anywhere', () => {
  const host = (stdinTty: boolean, stdoutTty: boolean, columns = 132, rows = 43): HostTty => ({
    stdin: { isTTY: stdinTty },
    stdout: { isTTY: stdoutTty, columns, rows, on: () => undefined, off: () => undefined },
  });
  const it = parse(['exec', '-it', 'box', '--', 'sh']);
  assert.deepEqual(it.flags, { interactive: true, tty: true });
  assert.deepEqual(toExecSpec(it.operands.slice(1), it.flags as ExecFlags, host(true, true)), { cmd: ['sh'], tty: true, cols: 132, rows: 43 });
  assert.throws(() => toExecSpec(['sh'], { interactive: true, tty: true }, host(false, true)), (err: unknown) => err instanceof UsageError && err.message === 'the input device is not a TTY');
  assert.deepEqual(toExecSpec(['sh'], { tty: true }, host(false, false)), { cmd: ['sh'], tty: true, cols: 80, rows: 24 }, 'no terminal to measure: 80x24');
  assert.deepEqual(hostSize(host(true, true, 5000, 0)), { cols: 1000, rows: 24 }, 'held to what the guest takes');
  assert.deepEqual(toExecSpec(['sh'], { interactive: true }, host(false, false)), { cmd: ['sh'] }, '-i alone needs no terminal');
});

test('rawTerminal: raw mode on, resizes passed on, everything undone by restore (once)', () => {
  const calls: string[] = [];
  let resize: (() => void) | undefined;
  const host: HostTty = {
    stdin: { isTTY: true, setRawMode: (raw: boolean) => calls.push(`raw ${raw}`) },
    stdout: { isTTY: true, columns: 100, rows: 30, on: (_e, fn) => (resize = fn), off: () => (resize = undefined) },
  };
  const sizes: string[] = [];
  const term = rawTerminal(host, (s) => sizes.push(`${s.cols}x${s.rows}`));
  resize!();
  term.restore();
  term.restore();
  assert.deepEqual(calls, ['raw true', 'raw false']);
  assert.deepEqual(sizes, ['100x30']);
  assert.equal(resize, undefined, 'no resize listener left');
});

test('run --health-*: a shell command and durations become the health check; tuning without a command is a usage error', () => {
  assert.deepEqual(runRequest(['--health-cmd', 'test -f /tmp/ok', '--health-interval', '2s', '--health-retries', '5', '--health-start-period', '1m', '-d', 'busybox']).health, {
    cmd: 'test -f /tmp/ok',
    intervalMs: 2000,
    retries: 5,
    startPeriodMs: 60_000,
  });
  assert.deepEqual(runRequest(['--health-cmd', 'true', '--health-timeout', '500ms', 'busybox']).health, { cmd: 'true', timeoutMs: 500 });
  assert.equal(runRequest(['busybox']).health, undefined);
  assert.throws(() => runRequest(['--health-interval', '5s', 'busybox']), { name: 'UsageError', message: /need --health-cmd/ });
  assert.throws(() => runRequest(['--health-cmd', 'true', '--health-interval', 'often', 'busybox']), { name: 'UsageError', message: /--health-interval/ });
});

test('run --ttl, --idle-timeout and --idle-action become the time limits; a bad action is a usage error', () => {
  const req = runRequest(['--ttl', '1h30m', '--idle-timeout', '10m', '--idle-action', 'pause', '-d', 'busybox']);
  assert.deepEqual([req.ttlMs, req.idleTimeoutMs, req.idleAction], [5_400_000, 600_000, 'pause']);
  assert.throws(() => runRequest(['--idle-action', 'sleep', 'busybox']), { name: 'UsageError', message: /--idle-action must be one of stop, pause, pause-to-disk/ });
});
