import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cellPaths } from '../src/domain/paths.js';

export const REPO = resolve(fileURLToPath(new URL('..', import.meta.url)));
export const CELL_BIN = join(REPO, 'bin', 'cell');

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** A throwaway CELL_HOME sharing the host-asset cache, with its celld stopped by `close`. */
export function benchHome(): { home: string; env: NodeJS.ProcessEnv; close: () => void } {
  const home = mkdtempSync('/tmp/cellb-');
  // VMs offline unless a benchmark turns networking on inside namespaces of its own (bench/network.ts):
  // a celld with networking on makes its bridge and rules in the host's own namespace.
  const env = { ...process.env, CELL_HOME: home, CELL_CACHE: process.env.CELL_CACHE ?? join(REPO, '.cell-test', 'cache'), CELL_NETWORK: 'off' };
  // The SDK starts celld with this process's own environment (CellClient.connect({ home })): off there too.
  process.env.CELL_NETWORK ??= 'off';
  return {
    home,
    env,
    close() {
      try {
        process.kill(Number(readFileSync(join(home, 'celld.pid'), 'utf8')), 'SIGTERM');
      } catch {
        /* not running */
      }
      rmSync(home, { recursive: true, force: true });
      rmSync(cellPaths(home, {}).memory, { recursive: true, force: true });
    },
  };
}

export function runCell(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; ms: number; stdout: string; stderr: string }> {
  const started = performance.now();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(CELL_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? -1, ms: performance.now() - started, stdout, stderr }));
  });
}

export function rssKib(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
}

export function pssKib(pid: number): number {
  const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
}

export const fmt = (ms: number) => `${ms.toFixed(0)} ms`;

/** QEMUs whose command line names this home. */
export function qemuPidsOf(home: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.startsWith('qemu-system') && cmdline.includes(home)) pids.push(Number(entry));
    } catch {
      /* gone */
    }
  }
  return pids;
}
