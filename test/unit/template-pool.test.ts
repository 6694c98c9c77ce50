import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseTemplateFile, revisionKeys } from '../../src/domain/template-file.js';

const template = (pool: string) => `template_id = "web"
[build]
base = "busybox"
[[build.step]]
run = "true"
[[variants]]
role = "server"
vcpus = 1
mem_mib = 128
${pool}
`;

test("a variant's pool: a size alone means exact spares, a table may ask for warm ones, and it changes no revision key", () => {
  const none = parseTemplateFile('t.toml', template(''), '/ctx').variants[0]!;
  const exact = parseTemplateFile('t.toml', template('pool = 3'), '/ctx').variants[0]!;
  const warm = parseTemplateFile('t.toml', template('pool = { size = 2, warm = true }'), '/ctx').variants[0]!;
  assert.equal(none.pool, undefined);
  assert.deepEqual(exact.pool, { size: 3, warm: false });
  assert.deepEqual(warm.pool, { size: 2, warm: true });
  assert.deepEqual(revisionKeys('k', null, none), revisionKeys('k', null, warm));
});

test('a bad pool is refused with where it is', () => {
  assert.throws(() => parseTemplateFile('t.toml', template('pool = 999'), '/ctx'), /t\.toml:10: pool size 999 is out of range: 0 \(no pool\) to 64/);
  assert.throws(() => parseTemplateFile('t.toml', template('pool = { size = 2, hot = true }'), '/ctx'), /unknown key "hot" in a pool/);
  assert.throws(() => parseTemplateFile('t.toml', template('pool = { size = 2, warm = "yes" }'), '/ctx'), /warm must be true or false/);
});
