import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cellPaths } from '../../src/domain/paths.js';

export const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const CELL_BIN = join(REPO, 'bin', 'cell');
/** Host assets (kernel, initramfs, images, accelerator verdict) are built once for all tests. */
export const SHARED_CACHE = process.env.CELL_CACHE ?? join(REPO, '.cell-test', 'cache');

export interface CellResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * A private CELL_HOME with its own celld, for one test file. `cleanup` removes every VM, stops the
 * daemon by its pid and checks that no QEMU of this home is left.
 */
export class TestHome {
  readonly home: string;
  readonly env: NodeJS.ProcessEnv;

  /** `home`: a folder to make and use instead of a new one in /tmp (on another file system, say). */
  constructor(extraEnv: NodeJS.ProcessEnv = {}, home?: string) {
    // Short path: QMP and agent sockets live under it and sun_path is 108 bytes.
    if (home) mkdirSync(home, { recursive: true, mode: 0o700 });
    this.home = home ?? mkdtempSync('/tmp/cellt-');
    // Networking off unless a test asks (it then confines celld to namespaces of its own: test/helpers/fake-internet.ts).
    // scripts/test.sh also exports CELL_NETWORK=off, for the cellds the SDK starts with the test's own env.
    this.env = { ...process.env, CELL_HOME: this.home, CELL_CACHE: SHARED_CACHE, CELL_NETWORK: 'off', ...extraEnv };
  }

  /** Runs `cell`; `as` runs it as another user (uid, gid, no other groups) from `cwd`. */
  cell(args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv; as?: { uid: number; gid: number }; cwd?: string } = {}): Promise<CellResult> {
    const started = Date.now();
    return new Promise((resolvePromise, reject) => {
      const child = spawn(CELL_BIN, args, { env: { ...this.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'], ...(opts.as ? { uid: opts.as.uid, gid: opts.as.gid } : {}), ...(opts.cwd ? { cwd: opts.cwd } : {}) });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (c: Buffer) => out.push(c));
      child.stderr.on('data', (c: Buffer) => err.push(c));
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`cell ${args.join(' ')} did not finish within ${opts.timeoutMs ?? 120_000} ms`));
      }, opts.timeoutMs ?? 120_000);
      child.on('error', reject);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolvePromise({
          code: code ?? (signal ? 128 : -1),
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
          ms: Date.now() - started,
        });
      });
      if (opts.input !== undefined) child.stdin.end(opts.input);
      else child.stdin.end();
    });
  }

  /** Runs `cell` and fails with its output when the exit code is not 0. */
  async ok(args: string[], opts?: Parameters<TestHome['cell']>[1]): Promise<CellResult> {
    const r = await this.cell(args, opts);
    if (r.code !== 0) throw new Error(`cell ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
    return r;
  }

  daemonPid(): number | null {
    try {
      return Number(readFileSync(join(this.home, 'celld.pid'), 'utf8').trim()) || null;
    } catch {
      return null;
    }
  }

  /** QEMU processes whose VM directory is under this home. */
  qemuPids(): number[] {
    return qemuProcesses().filter((p) => p.cmdline.includes(this.home)).map((p) => p.pid);
  }

  async cleanup(): Promise<void> {
    if (this.daemonPid()) {
      const ids = await this.cell(['ps', '-a', '-q']).catch(() => null);
      const list = ids?.code === 0 ? ids.stdout.split('\n').filter(Boolean) : [];
      if (list.length > 0) await this.cell(['rm', '-f', ...list]).catch(() => null);
    }
    const pid = this.daemonPid();
    if (pid) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      await waitFor(() => !alive(pid), 5000);
    }
    // Last resort, by pid and only ours: a failed test must not leak VMs.
    for (const q of this.qemuPids()) {
      try {
        process.kill(q, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    rmSync(this.home, { recursive: true, force: true });
    rmSync(cellPaths(this.home, {}).memory, { recursive: true, force: true });
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number, intervalMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return check();
}

export function qemuProcesses(): { pid: number; cmdline: string }[] {
  const result: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmdline.startsWith('qemu-system') || cmdline.includes('/qemu-system')) result.push({ pid: Number(entry), cmdline });
    } catch {
      /* exited meanwhile */
    }
  }
  return result;
}

export function hostHasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export { existsSync };
