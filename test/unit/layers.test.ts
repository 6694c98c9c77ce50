/**
 * The architecture's layers and the absence of import cycles (type imports included), checked by
 * dependency-cruiser against .dependency-cruiser.cjs. A violation fails with the offending edges.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from '../helpers/cell-home.js';

test('src/ keeps its layers and has no import cycles', () => {
  const run = spawnSync(join(REPO, 'node_modules', '.bin', 'depcruise'), ['src', '--config', '.dependency-cruiser.cjs', '--output-type', 'err'], {
    cwd: REPO,
    encoding: 'utf8',
  });
  assert.equal(run.error, undefined);
  assert.equal(run.status, 0, `dependency-cruiser found violations:\n${run.stdout}${run.stderr}`);
});
