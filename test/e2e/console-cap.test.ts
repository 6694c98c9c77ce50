/**
 * A guest that floods its console on real QEMU: serial.log is opened append-only by QEMU, so when
 * celld cuts it back past the cap, the guest's later output lands at the new end (no file that
 * grows sparse past the cap).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TestHome, waitFor } from '../helpers/cell-home.js';

describe('console log cap', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome({ CELL_LOG_MAX_BYTES: '65536' });
  });
  after(async () => {
    await h.cleanup();
  });

  test('a flood past the cap is cut back, and later output still lands at the end', async () => {
    const id = (await h.ok(['run', '-d', '--name', 'loud', 'busybox'])).stdout.trim();
    const serial = join(h.home, 'vms', id, 'serial.log');
    await h.ok(['exec', 'loud', '--', 'sh', '-c', 'head -c 300000 /dev/zero | tr "\\0" x > /dev/console']);
    assert.ok(await waitFor(() => readFileSync(serial, 'utf8').includes('console output past the 65536-byte cap were dropped'), 15_000), 'cut back');
    await h.ok(['exec', 'loud', '--', 'sh', '-c', 'echo after-the-cut > /dev/console']);
    assert.ok(await waitFor(() => readFileSync(serial, 'utf8').includes('after-the-cut'), 5000));
    const st = statSync(serial);
    assert.ok(st.size < 65536, `serial.log is ${st.size} bytes`);
    await h.ok(['rm', '-f', 'loud']);
  });
});
