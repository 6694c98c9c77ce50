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
    // The serial line drains slowly (more so on a loaded host): a cut may come mid-flood, and the
    // rest is cut by a later sweep. Wait until it was cut and stays under the cap, the flood drained.
    let last = -1;
    const settled = () => {
      const size = statSync(serial).size;
      const quiet = size === last;
      last = size;
      return quiet && size < 65536 && readFileSync(serial, 'utf8').includes('console output past the 65536-byte cap were dropped');
    };
    assert.ok(await waitFor(settled, 60_000, 1500), 'cut back, and the flood drained');
    await h.ok(['exec', 'loud', '--', 'sh', '-c', 'echo after-the-cut > /dev/console']);
    assert.ok(await waitFor(() => readFileSync(serial, 'utf8').includes('after-the-cut'), 5000));
    const st = statSync(serial);
    assert.ok(st.size < 65536, `serial.log is ${st.size} bytes`);
    await h.ok(['rm', '-f', 'loud']);
  });
});
