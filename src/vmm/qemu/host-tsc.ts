import { readFileSync } from 'node:fs';

let cached: number | undefined;

/**
 * The host's TSC frequency in kHz. Under TCG the guest's TSC ticks at the host's rate, and the
 * guest is told that rate up front (tsc_early_khz) so it skips calibration, which hangs when
 * several guests boot at once on a busy host. A wrong figure makes guest time run fast or slow
 * (measured: told 2.0 GHz on a 2.6 GHz host, `sleep 5` took 3.97 s).
 */
export function hostTscKhz(): number {
  if (cached !== undefined) return cached;
  cached = fromSysfs() ?? fromCpuinfo() ?? 2_000_000;
  return cached;
}

function fromSysfs(): number | undefined {
  try {
    const khz = Number(readFileSync('/sys/devices/system/cpu/cpu0/tsc_freq_khz', 'utf8').trim());
    return khz > 0 ? khz : undefined;
  } catch {
    return undefined;
  }
}

function fromCpuinfo(): number | undefined {
  try {
    const match = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    const mhz = match ? Number(match[1]) : NaN;
    return mhz > 0 ? Math.round(mhz * 1000) : undefined;
  } catch {
    return undefined;
  }
}
