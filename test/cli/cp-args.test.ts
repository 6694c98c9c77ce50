import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeCopy, parseOperand, planCopy } from '../../src/cli/commands/cp.js';
import { UsageError } from '../../src/cli/errors.js';

test('VM:PATH operands are told apart from host paths like docker cp does', () => {
  assert.deepEqual(parseOperand('box:/etc/hosts'), { vm: 'box', path: '/etc/hosts' });
  assert.deepEqual(parseOperand('box:etc'), { vm: 'box', path: '/etc' }, "relative to the VM's /");
  assert.deepEqual(parseOperand('box:'), { vm: 'box', path: '/' });
  assert.deepEqual(parseOperand('./a:b'), { path: './a:b' });
  assert.deepEqual(parseOperand('/tmp/a:b'), { path: '/tmp/a:b' });
  assert.deepEqual(parseOperand(':x'), { path: ':x' });
  assert.deepEqual(parseOperand('plain'), { path: 'plain' });
});

test('planCopy picks the direction and makes the host path absolute, keeping / and /. suffixes', () => {
  assert.deepEqual(planCopy('./app', 'box:/srv', '/home/me'), { direction: 'in', vm: 'box', hostPath: '/home/me/app', guestPath: '/srv' });
  assert.deepEqual(planCopy('app/.', 'box:/srv', '/home/me'), { direction: 'in', vm: 'box', hostPath: '/home/me/app/.', guestPath: '/srv' });
  assert.deepEqual(planCopy('box:/var/log', '.', '/home/me'), { direction: 'out', vm: 'box', guestPath: '/var/log', hostPath: '/home/me/.' });
  assert.deepEqual(planCopy('box:/etc/hosts', 'out/', '/home/me'), { direction: 'out', vm: 'box', guestPath: '/etc/hosts', hostPath: '/home/me/out/' });
  assert.deepEqual(planCopy('box:/x', '/', '/home/me'), { direction: 'out', vm: 'box', guestPath: '/x', hostPath: '/' });
  assert.throws(() => planCopy('a', 'b'), (e: unknown) => e instanceof UsageError && /must be in a VM, written VM:PATH/.test(e.message));
  assert.throws(() => planCopy('a:/x', 'b:/y'), /from one VM to another/);
  assert.throws(() => planCopy('-', 'b:/y'), /tar streams/);
});

test('a copy is summed up in one line', () => {
  assert.equal(describeCopy({ target: '/x', files: 1, directories: 0, symlinks: 0, bytes: 5 }), '1 file (5 B)');
  assert.equal(describeCopy({ target: '/x', files: 3, directories: 2, symlinks: 1, bytes: 2048 }), '3 files, 2 directories, 1 symlink (2.0 KiB)');
});
