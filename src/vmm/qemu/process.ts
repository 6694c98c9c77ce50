import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { stripControl } from '../../domain/terminal-text.js';

export const QEMU_BINARY = 'qemu-system-x86_64';

export interface SpawnedQemu {
  pid: number;
  /** Settles when QEMU exits, if this process is its parent (else never: use QMP close). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Starts QEMU in its own session with no pipes to us, so it outlives the CLI and celld; its
 * stdout and stderr go to a log file that boot errors quote.
 */
export function spawnQemu(argv: readonly string[], logPath: string, inheritFds: readonly number[] = [], netns?: string): SpawnedQemu {
  const log = openSync(logPath, 'a', 0o600);
  try {
    // `inheritFds` become the child's descriptors 3, 4, ... (for `-add-fd`).
    // In a VM's network namespace, nsenter joins it and execs QEMU: the same pid, QEMU's own cmdline.
    const [cmd, args] = netns ? ['nsenter', [`--net=/run/netns/${netns}`, '--', QEMU_BINARY, ...argv]] : [QEMU_BINARY, argv];
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log, ...inheritFds] });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: -1, signal: null }));
    });
    child.unref();
    if (child.pid === undefined) {
      throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `cannot start ${QEMU_BINARY}: is qemu-system-x86 installed? (run: cell setup)`);
    }
    return { pid: child.pid, exited };
  } finally {
    closeSync(log);
  }
}

/** True when `pid` is alive and is the QEMU of VM `vmId` (guards against pid reuse). */
export function isQemuOf(pid: number, vmId: string): boolean {
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.includes(`cellvm-${vmId}`)) return false;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // A zombie has exited; only its parent's wait is missing.
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z';
  } catch {
    return false;
  }
}

export function signalProcess(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Waits until `pid` is no longer QEMU of `vmId`, up to `timeoutMs`; true if it is gone. */
export async function waitGone(pid: number, vmId: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isQemuOf(pid, vmId)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/**
 * The last `lines` lines of a log file, for error messages, without control sequences: the guest
 * writes the serial console, and these lines reach users' terminals.
 */
export function tailFile(path: string, lines = 20): string {
  try {
    const text = stripControl(readFileSync(path, 'utf8'));
    return text.split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
  } catch {
    return '';
  }
}
