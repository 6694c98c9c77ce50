import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig, withEnvironment } from '../../src/domain/config.js';

test('importMaxBytes comes from config.json, CELL_IMPORT_MAX_BYTES overrides it, anything but whole bytes is refused', () => {
  assert.deepEqual(parseConfig({ importMaxBytes: 5_000_000 }, 'config.json'), { importMaxBytes: 5_000_000 });
  assert.deepEqual(withEnvironment({ importMaxBytes: 5 }, { CELL_IMPORT_MAX_BYTES: '7' }), { importMaxBytes: 7 });
  assert.deepEqual(withEnvironment({ importMaxBytes: 5 }, { CELL_IMPORT_MAX_BYTES: '' }), { importMaxBytes: 5 });
  assert.throws(() => parseConfig({ importMaxBytes: 1.5 }, 'config.json'), /config\.json: importMaxBytes must be a whole number of bytes/);
  assert.throws(() => withEnvironment({}, { CELL_IMPORT_MAX_BYTES: 'lots' }), /CELL_IMPORT_MAX_BYTES must be a whole number of bytes, not "lots"/);
  assert.throws(() => parseConfig({ importMaxByte: 1 }, 'config.json'), /unknown setting "importMaxByte" \(known: .*importMaxBytes\b/);
});

test('poolMemoryMaxBytes comes from config.json and CELL_POOL_MEMORY_MAX_BYTES overrides it', () => {
  assert.deepEqual(parseConfig({ poolMemoryMaxBytes: 2 ** 30 }, 'config.json'), { poolMemoryMaxBytes: 2 ** 30 });
  assert.deepEqual(withEnvironment({ poolMemoryMaxBytes: 5 }, { CELL_POOL_MEMORY_MAX_BYTES: '0' }), { poolMemoryMaxBytes: 0 });
  assert.throws(() => parseConfig({ poolMemoryMaxBytes: '1G' }, 'config.json'), /poolMemoryMaxBytes must be a whole number of bytes/);
});
