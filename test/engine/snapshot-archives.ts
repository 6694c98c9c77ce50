/**
 * Snapshot archives for import tests, written the way exportSnapshot writes them (GNU tar,
 * --sparse) with a real qcow2 disk and the fake backend's compatibility key; `spoil` changes the
 * members or the metadata first (hostile archives).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FAKE_IMAGE_DIGEST } from './harness.js';

export const MIB = 1024 * 1024;
export const SNAPSHOT_MEMBERS = ['snapshot.json', 'state', 'memory', 'disk.qcow2', 'data.qcow2'];

let n = 0;

export function snapshotArchive(work: string, spoil: (dir: string, meta: Record<string, unknown>) => void = () => {}): string {
  const dir = join(work, `a${++n}`);
  mkdirSync(dir, { recursive: true });
  const compat = { qemuVersion: 'fake-1.0', machine: 'fake-microvm', cpuModel: 'qemu64', accelerator: 'tcg', kernelDigest: `sha256:${'1'.repeat(64)}`, initramfsDigest: `sha256:${'2'.repeat(64)}` };
  const snapshot: Record<string, unknown> = {
    id: n.toString(16).padStart(64, 'a'),
    name: `imported-${n}`,
    parentVm: 'x'.repeat(64),
    parentVmName: 'elsewhere',
    parentSnapshot: null,
    spec: { image: 'busybox', imageDigest: FAKE_IMAGE_DIGEST, cpus: 1, memoryMib: 64, cmd: [], env: ['A=b'], workingDir: '/', user: '0:0', timeoutSec: 0, autoRemove: false },
    compat,
    stateBytes: 10,
    memoryBytes: 0,
    diskBytes: 0,
    createdAt: new Date().toISOString(),
  };
  writeFileSync(join(dir, 'state'), JSON.stringify({ format: 'fake-state/1', machine: 'elsewhere', withRam: false }));
  writeFileSync(join(dir, 'memory'), '');
  truncateSync(join(dir, 'memory'), 64 * MIB);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '64M']);
  const meta = { format: 'cellvm-snapshot/1', snapshot };
  spoil(dir, meta);
  writeFileSync(join(dir, 'snapshot.json'), JSON.stringify(meta));
  const file = join(work, `a${n}.tar`);
  const members = readdirSync(dir).filter((m) => SNAPSHOT_MEMBERS.includes(m));
  execFileSync('tar', ['--sparse', '-cf', file, '-C', dir, ...members]);
  return file;
}
