import { test } from 'node:test';
import assert from 'node:assert/strict';
import { toRunRequest, withoutSeparator } from '../../src/cli/commands/run.js';

test('run: image, then the command verbatim, with or without --', () => {
  assert.deepEqual(toRunRequest(['busybox', '--', 'ls', '-la'], {}), { image: 'busybox', cmd: ['ls', '-la'] });
  assert.deepEqual(toRunRequest(['busybox', 'ls', '-la'], {}), { image: 'busybox', cmd: ['ls', '-la'] });
  assert.deepEqual(toRunRequest(['busybox'], {}), { image: 'busybox', cmd: [] });
});

test('run: flags become request fields, -e repeats', () => {
  const req = toRunRequest(['busybox', 'true'], { name: 'n', cpus: 2, memory: 512, env: ['A=1', 'B=2'], workdir: '/tmp', user: '1000', timeout: 1.5, rm: true });
  assert.deepEqual(req, { image: 'busybox', cmd: ['true'], name: 'n', cpus: 2, memoryMib: 512, env: ['A=1', 'B=2'], workingDir: '/tmp', user: '1000', timeoutSec: 1.5, autoRemove: true });
});

test('run --from: every operand is the command', () => {
  assert.deepEqual(toRunRequest(['--', 'cat', '/etc/hostname'], { from: 'warm' }), { fromSnapshot: 'warm', cmd: ['cat', '/etc/hostname'] });
});

test('run without an image is refused', () => {
  assert.throws(() => toRunRequest([], {}), /an image is required/);
});

test('only a leading -- is a separator', () => {
  assert.deepEqual(withoutSeparator(['--', 'echo', '--']), ['echo', '--']);
  assert.deepEqual(withoutSeparator(['echo', '--']), ['echo', '--']);
});
