import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { Cgroups, cgroupLimits } from '../../src/vmm/qemu/cgroup.js';
import { buildQemuArgv, TCG_CODE_CACHE_MIB } from '../../src/vmm/qemu/argv.js';
import { machineFiles } from '../../src/vmm/qemu/files.js';
import { confinementArgv } from '../../src/vmm/qemu/confinement.js';
import type { MachineSpec } from '../../src/vmm/backend.js';

test('cgroup v2: a group per QEMU under cellvm/ with memory.max, pids.max and cpu.max', () => {
  const root = mkdtempSync('/tmp/cg2-');
  try {
    writeFileSync(join(root, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
    const cgroups = Cgroups.detect(root);
    assert.equal(cgroups.unavailable, null);
    assert.equal(readFileSync(join(root, 'cellvm', 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids');
    const group = cgroups.create('abcdef0123456789ffff', { cpus: 2, memoryMib: 512, accelerator: 'kvm' })!;
    const [dir] = group.dirs as [string];
    assert.match(dir, /\/cellvm\/abcdef0123456789-[0-9a-f]{8}$/);
    const l = cgroupLimits({ cpus: 2, memoryMib: 512, accelerator: 'kvm' });
    assert.equal(readFileSync(join(dir, 'memory.max'), 'utf8'), String(l.memoryBytes));
    assert.ok(l.memoryBytes > 512 * 2 ** 20 && l.memoryBytes < 1024 * 2 ** 20, 'a bit above its RAM');
    assert.equal(readFileSync(join(dir, 'pids.max'), 'utf8'), '130');
    assert.equal(readFileSync(join(dir, 'cpu.max'), 'utf8'), '250000 100000');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('cgroup v1: one group per controller; without the controllers, cgroups are unavailable and say why', () => {
  const root = mkdtempSync('/tmp/cg1-');
  try {
    for (const c of ['cpu,cpuacct', 'memory', 'pids']) {
      mkdirSync(join(root, c));
      writeFileSync(join(root, c, 'cgroup.procs'), '');
    }
    const cgroups = Cgroups.detect(root);
    const group = cgroups.create('vm1', { cpus: 1, memoryMib: 256, accelerator: 'tcg' })!;
    assert.equal(group.dirs.length, 3);
    const [memory, pids, cpu] = group.dirs as [string, string, string];
    assert.equal(readFileSync(join(memory, 'memory.limit_in_bytes'), 'utf8'), String(cgroupLimits({ cpus: 1, memoryMib: 256, accelerator: 'tcg' }).memoryBytes));
    assert.equal(readFileSync(join(pids, 'pids.max'), 'utf8'), '129');
    assert.equal(readFileSync(join(cpu, 'cpu.cfs_quota_us'), 'utf8'), '150000');
    assert.ok(cpu.includes('/cpu,cpuacct/cellvm/'));
    const none = Cgroups.detect(join(root, 'nothing-here'));
    assert.match(none.unavailable!, /no cgroup v2 and no v1/);
    assert.equal(none.create('x', { cpus: 1, memoryMib: 256, accelerator: 'tcg' }), null);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  assert.ok(!existsSync(root));
});

/** A one-vCPU 128 MiB TCG guest, and the argument QEMU gets after `flag` for a spec. */
const TCG_SPEC: MachineSpec = {
  id: 'abc', dir: '/tmp/x', kernelPath: '/k', initrdPath: '/i', baseDiskPath: '/b', baseDiskFormat: 'raw', cpus: 1, memoryMib: 128,
  hostname: 'h', accelerator: 'tcg', memory: { path: '/m', shared: false },
};
const argAfter = (spec: MachineSpec, flag: string) => {
  const argv = buildQemuArgv(spec, machineFiles('/tmp/x'));
  return argv[argv.indexOf(flag) + 1];
};

test("TCG's code cache is bounded and counted in the memory limit: a guest short of memory meets its own OOM killer, not the host's", () => {
  assert.equal(argAfter(TCG_SPEC, '-accel'), `tcg,tb-size=${TCG_CODE_CACHE_MIB}`);
  assert.equal(argAfter({ ...TCG_SPEC, accelerator: 'kvm' }, '-accel'), 'kvm');
  const mib = (accelerator: 'kvm' | 'tcg') => cgroupLimits({ cpus: 1, memoryMib: 128, accelerator }).memoryBytes / 2 ** 20;
  assert.equal(mib('tcg') - mib('kvm'), TCG_CODE_CACHE_MIB);
  // Measured (TCG, a 128 MiB guest whose memory was full, code cache at its bound): RAM 127 MiB,
  // anonymous 101 MiB, mapped files 23 MiB; the old limit (272 MiB) left 21 MiB, now 85.
  assert.ok(mib('tcg') >= 128 + 101 + 23 + 64, `limit ${mib('tcg')} MiB leaves room above the measured peak`);
});

test("TCG guests keep the kernel's LOCK prefixes (noreplace-smp: rewriting them costs a TCG boot ~145 ms); KVM guests take the UP forms", () => {
  const cmdline = (s: MachineSpec) => argAfter(s, '-append')!.split(' ');
  assert.ok(cmdline(TCG_SPEC).includes('noreplace-smp'));
  assert.ok(!cmdline({ ...TCG_SPEC, accelerator: 'kvm' }).includes('noreplace-smp'));
});

test('confined argv: seccomp sandbox, -runas uid:gid, disks as fdsets without locking, incoming over a unix socket', () => {
  const dir = '/tmp/cellvm-argv-test';
  const spec: MachineSpec = {
    id: 'abc', dir, kernelPath: '/k', initrdPath: '/i', baseDiskPath: '/b', baseDiskFormat: 'raw', cpus: 1, memoryMib: 256,
    hostname: 'h', accelerator: 'tcg', memory: { path: '/m', shared: false }, incoming: true,
  };
  const argv = buildQemuArgv(spec, machineFiles(dir), [], { sandbox: true, runAs: { uid: 1879048193, gid: 1879048193 }, diskFds: { root: [3, 4] } });
  const joined = argv.join(' ');
  assert.match(joined, /-sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny -runas 1879048193:1879048193/);
  assert.match(joined, /-add-fd fd=3,set=1 -add-fd fd=4,set=1/);
  assert.match(joined, /-drive id=root,file=\/dev\/fdset\/1,file\.locking=off,format=qcow2/);
  assert.match(joined, /-incoming unix:\/tmp\/cellvm-argv-test\/incoming\.sock/);
  assert.ok(!joined.includes('exec:'), 'nothing for QEMU to spawn');
  assert.ok(!joined.includes('throttling.') && !joined.includes('max-bytes'), 'no limits unless asked');
  const limited = buildQemuArgv({ ...spec, dataDisk: { baseDiskPath: '/d', baseDiskFormat: 'raw', mountPoint: '/data' }, limits: { diskIops: 300, diskBytesPerSec: 1048576, rngBytesPerSec: 64 } }, machineFiles(dir)).join(' ');
  assert.equal(limited.match(/discard=unmap,throttling\.iops-total=300,throttling\.bps-total=1048576/g)?.length, 2, 'both disks are throttled');
  assert.match(limited, /virtio-rng-device,rng=rng0,max-bytes=64,period=1000/);
  // Volumes: raw disks of their own (read-only when :ro), found by serial, mounted from the command line; as fdsets when confined.
  const volumes = [{ imagePath: '/v/a.ext4', mountPoint: '/cache', readOnly: false }, { imagePath: '/v/b.ext4', mountPoint: '/ref', readOnly: true }];
  const withVolumes = buildQemuArgv({ ...spec, volumes }, machineFiles(dir), [], { sandbox: true, diskFds: { root: [3, 4], volumes: [[5, 6], [7, 8]] } }).join(' ');
  assert.match(withVolumes, /-add-fd fd=5,set=10 -add-fd fd=6,set=10 -add-fd fd=7,set=11 -add-fd fd=8,set=11/);
  assert.match(withVolumes, /-drive id=vol0,file=\/dev\/fdset\/10,file\.locking=off,format=raw,if=none,discard=unmap -device virtio-blk-device,drive=vol0,serial=cell-vol-0/);
  assert.match(withVolumes, /-drive id=vol1,file=\/dev\/fdset\/11,file\.locking=off,format=raw,if=none,discard=unmap,readonly=on -device virtio-blk-device,drive=vol1,serial=cell-vol-1/);
  assert.match(withVolumes, /cell\.vol=0:rw:\/cache cell\.vol=1:ro:\/ref/);
  // Not root: no -runas, and set*id stays denied.
  assert.deepEqual(confinementArgv({ sandbox: true }), ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
  assert.deepEqual(confinementArgv({ sandbox: false }), []);
});
