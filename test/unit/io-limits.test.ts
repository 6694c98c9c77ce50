import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateIoLimits } from '../../src/domain/vm.js';
import { parseArchiveMeta } from '../../src/domain/snapshot-archive.js';

test('I/O limits: whole numbers in range, named by their flag when not', () => {
  assert.deepEqual(validateIoLimits({ diskIops: 100, rngBytesPerSec: 1024 }), { diskIops: 100, rngBytesPerSec: 1024 });
  assert.equal(validateIoLimits({}), undefined);
  assert.equal(validateIoLimits(undefined), undefined);
  assert.throws(() => validateIoLimits({ diskIops: 0 }), /--disk-iops 0 is out of range: give a whole number from 10/);
  assert.throws(() => validateIoLimits({ diskBytesPerSec: 1.5e6 + 0.5 }), /--disk-bps/);
  assert.throws(() => validateIoLimits({ rngBytesPerSec: 2 ** 41 }), /--rng-bps/);
  assert.throws(() => validateIoLimits({ cpuShares: 5 } as never), /unknown I\/O limit "cpuShares"/);
});

test("a snapshot archive's limits are checked like a user's", () => {
  const meta = (limits: unknown) =>
    JSON.stringify({
      format: 'cellvm-snapshot/1',
      snapshot: {
        id: 'a'.repeat(64),
        name: 'imported',
        createdAt: new Date().toISOString(),
        spec: { image: 'busybox', imageDigest: `sha256:${'b'.repeat(64)}`, cpus: 1, memoryMib: 256, cmd: [], env: [], workingDir: '/', user: '0:0', timeoutSec: 0, autoRemove: false, limits },
        compat: { qemuVersion: '7.2', machine: 'microvm', cpuModel: 'qemu64', accelerator: 'tcg', kernel: 'k', initramfs: 'i' },
      },
    });
  assert.throws(() => parseArchiveMeta('x.tar', meta({ diskIops: -1 }), undefined), /x\.tar is not a usable cellvm snapshot archive: .*--disk-iops -1 is out of range/);
  assert.throws(() => parseArchiveMeta('x.tar', meta('fast'), undefined), /limits must be an object/);
});
