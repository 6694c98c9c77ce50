/** Output helpers for the CLI: tables, ages, sizes. Pure functions, unit-tested. */

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** "45s", "3m", "2h", "5d": how long ago or how long. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

export function ago(iso: string | null, now = Date.now()): string {
  return iso ? `${duration(now - Date.parse(iso))} ago` : '-';
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export interface VmStateView {
  state: string;
  startedAt: string | null;
  stoppedAt: string | null;
  exit: { exitCode: number | null; signal: number | null; reason: string } | null;
  health?: { status: string } | null;
}

/** "running 5s", "running 2m (healthy)", "stopped (exit 0) 2m ago", "stopped (boot_failed) 1h ago". */
export function vmState(vm: VmStateView, now = Date.now()): string {
  if (vm.state === 'running') {
    // As docker ps: "Up 5 minutes (healthy)".
    const health = vm.health ? ` (${vm.health.status === 'starting' ? 'health: starting' : vm.health.status})` : '';
    return `running ${vm.startedAt ? duration(now - Date.parse(vm.startedAt)) : ''}`.trim() + health;
  }
  if (vm.state === 'stopped') {
    const why = vm.exit
      ? vm.exit.exitCode !== null
        ? `exit ${vm.exit.exitCode}`
        : vm.exit.signal !== null
          ? `signal ${vm.exit.signal}`
          : vm.exit.reason
      : 'stopped';
    return `stopped (${why})${vm.stoppedAt ? ' ' + ago(vm.stoppedAt, now) : ''}`;
  }
  return vm.state;
}

export const short = (id: string) => id.slice(0, 12);

/** Elapsed time for progress: "0.4s", "12s", "3m05s". */
export function elapsed(ms: number): string {
  if (ms < 10_000) return `${(Math.max(0, ms) / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

export interface ProgressView {
  step: string;
  status: 'start' | 'done' | 'cached';
  detail?: string;
}

const START_VERBS: Record<string, string> = { accelerator: 'probing', lock: 'waiting' };

/** One plain line of host set-up progress: "[kernel] cached: 6.1.0", "[initramfs] building...". */
export function setupLine(e: ProgressView, tookMs?: number): string {
  const detail = e.detail ? `: ${e.detail}` : '';
  switch (e.status) {
    case 'start':
      return `[${e.step}] ${e.detail ? `${e.detail} ...` : `${START_VERBS[e.step] ?? 'building'}...`}`;
    case 'cached':
      return `[${e.step}] cached${detail}`;
    case 'done':
      return `[${e.step}] done${detail}${tookMs === undefined ? '' : ` (${elapsed(tookMs)})`}`;
  }
}
