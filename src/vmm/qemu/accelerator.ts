import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { release } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Accelerator } from '../backend.js';
import { confinementArgv, confinementEnabled, pickRunAs } from './confinement.js';
import { QEMU_BINARY, signalProcess, spawnQemu, tailFile, waitGone } from './process.js';

const run = promisify(execFile);

export interface AcceleratorVerdict {
  accelerator: Accelerator;
  reason: string;
  hostKernel: string;
  qemuVersion: string;
  probedAt: string;
  /** How long the probe boot took to reach init (ms), when it ran. */
  probeMs?: number;
}

/** The marker a kernel prints (without `quiet`) when it hands over to the initramfs's /init. */
const INIT_MARKER = 'Run /init as init process';
const PROBE_DEADLINE_MS = 8000;

export async function qemuVersion(): Promise<string> {
  const { stdout } = await run(QEMU_BINARY, ['--version']);
  const match = /version (\S+)/.exec(stdout);
  return match?.[1] ?? stdout.split('\n')[0]!.trim();
}

/**
 * Decides KVM or TCG once per host kernel and QEMU version: /dev/kvm must exist and be usable, and
 * a short probe boot under KVM must reach the guest's init. Some hosts expose a KVM on which a
 * normal guest hangs early (a paravirtual KVM: the kernel stops after "Probing EDD"), so existence
 * of /dev/kvm proves nothing. CELL_ACCEL=kvm|tcg overrides the probe.
 */
export async function detectAccelerator(opts: {
  cacheDir: string;
  kernelPath: string;
  initrdPath: string;
  force?: boolean;
}): Promise<AcceleratorVerdict> {
  const hostKernel = release();
  const version = await qemuVersion();
  const base = { hostKernel, qemuVersion: version, probedAt: new Date().toISOString() };

  const override = process.env.CELL_ACCEL;
  if (override === 'kvm' || override === 'tcg') {
    return { ...base, accelerator: override, reason: `forced by CELL_ACCEL=${override}` };
  }

  const cachePath = join(opts.cacheDir, 'accelerator.json');
  if (!opts.force && existsSync(cachePath)) {
    try {
      const cached = JSON.parse(readFileSync(cachePath, 'utf8')) as AcceleratorVerdict;
      if (cached.hostKernel === hostKernel && cached.qemuVersion === version) return cached;
    } catch {
      /* unreadable cache: probe again */
    }
  }

  const verdict = await probe(opts, base);
  await mkdir(opts.cacheDir, { recursive: true });
  const tmp = `${cachePath}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(verdict, null, 2));
  await rename(tmp, cachePath);
  return verdict;
}

async function probe(
  opts: { kernelPath: string; initrdPath: string },
  base: Omit<AcceleratorVerdict, 'accelerator' | 'reason'>,
): Promise<AcceleratorVerdict> {
  if (!existsSync('/dev/kvm')) return { ...base, accelerator: 'tcg', reason: '/dev/kvm does not exist' };
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { ...base, accelerator: 'tcg', reason: '/dev/kvm is not accessible to this user' };
  }
  const dir = await mkdtemp('/tmp/cell-kvm-probe-');
  const serial = join(dir, 'serial.log');
  const started = Date.now();
  const spawned = spawnQemu(
    [
      '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on', '-accel', 'kvm', '-cpu', 'host',
      '-m', '128', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-serial', `file:${serial}`, '-kernel', opts.kernelPath, '-initrd', opts.initrdPath,
      '-append', 'console=ttyS0 panic=-1 cell.probe=1',
      ...confinementArgv({ sandbox: confinementEnabled(), runAs: pickRunAs() }),
    ],
    join(dir, 'qemu.log'),
  );
  let exited = false;
  void spawned.exited.then(() => {
    exited = true;
  });
  try {
    while (Date.now() - started < PROBE_DEADLINE_MS && !exited) {
      if (tailFile(serial, 400).includes(INIT_MARKER)) {
        return { ...base, accelerator: 'kvm', reason: 'KVM probe boot reached init', probeMs: Date.now() - started };
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    const last = tailFile(serial, 1) || tailFile(join(dir, 'qemu.log'), 1) || 'no output';
    const why = exited ? 'QEMU refused KVM' : `KVM probe boot did not reach init within ${PROBE_DEADLINE_MS / 1000} s`;
    return { ...base, accelerator: 'tcg', reason: `${why} (last line: ${last.trim().slice(0, 120)}); using TCG` };
  } finally {
    if (!exited) {
      signalProcess(spawned.pid, 'SIGKILL');
      await Promise.race([spawned.exited, waitGone(spawned.pid, '', 3000)]);
    }
    await rm(dir, { recursive: true, force: true });
  }
}
