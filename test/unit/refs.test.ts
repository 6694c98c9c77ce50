import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resolveRef } from '../../src/domain/ids.js';
import { CellError } from '../../src/domain/errors.js';

const vms = [
  { id: 'abc123' + '0'.repeat(58), name: 'alpha' },
  { id: 'abc999' + '1'.repeat(58), name: 'beta' },
  { id: 'def456' + '2'.repeat(58), name: 'abc' },
];

test('a full id, a name and a unique prefix each resolve', () => {
  assert.equal(resolveRef('VM', vms[0]!.id, vms).name, 'alpha');
  assert.equal(resolveRef('VM', 'beta', vms).name, 'beta');
  assert.equal(resolveRef('VM', 'def4', vms).name, 'abc');
  assert.equal(resolveRef('VM', 'abc1', vms).name, 'alpha');
});

test('a name wins over a prefix that looks the same', () => {
  assert.equal(resolveRef('VM', 'abc', vms).name, 'abc');
});

test('an ambiguous prefix lists the candidates', () => {
  assert.throws(
    () => resolveRef('VM', 'abc', vms.slice(0, 2)),
    (err: unknown) => {
      assert.ok(err instanceof CellError);
      assert.equal(err.code, 'ambiguous_ref');
      assert.match(err.message, /abc123000000 \(alpha\)/);
      assert.match(err.message, /abc999111111 \(beta\)/);
      return true;
    },
  );
});

test('prefixes shorter than 3 characters do not match', () => {
  assert.throws(() => resolveRef('VM', 'de', vms), /no such VM: de/);
});

test('an unknown reference is not_found', () => {
  assert.throws(
    () => resolveRef('VM', 'zzz', vms),
    (err: unknown) => err instanceof CellError && err.code === 'not_found',
  );
});
