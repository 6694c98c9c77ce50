import { spawn } from 'node:child_process';
import { CellError, ErrorCodes } from '../domain/errors.js';

export interface RunOptions {
  cwd?: string;
  /** Added to (not replacing) the current environment. */
  env?: NodeJS.ProcessEnv;
  /** Bytes written to the child's stdin, which is then closed. */
  input?: Buffer | string;
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/** How much of a failing command's stderr goes into the error message: enough to see why. */
const STDERR_TAIL_LINES = 8;
const STDERR_TAIL_CHARS = 1500;

/**
 * Runs a host command to completion and captures its output. Set-up commands (apt-get, gcc,
 * mke2fs, ...) fail in ways the user must be able to read, so a non-zero exit becomes a
 * CellError(SETUP_FAILED) naming the command and quoting the tail of its stderr; a command that
 * does not exist at all is a HOST_MISSING_DEPENDENCY.
 */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return runRaw(cmd, args, opts).then((r) => ({ stdout: r.stdout.toString('utf8'), stderr: r.stderr }));
}

/** Like `run` but keeps stdout as bytes (for binary output such as `xz -dc`). */
export function runRaw(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<{ stdout: Buffer; stderr: string }> {
  const shown = [cmd, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, PATH: hostSearchPath(), ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, opts.timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      if (e.code === 'ENOENT') {
        reject(new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `command not found: ${cmd}`, { command: shown }, { cause: e }));
      } else {
        reject(new CellError(ErrorCodes.SETUP_FAILED, `cannot run ${shown}: ${e.message}`, { command: shown }, { cause: e }));
      }
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const stdout = Buffer.concat(out);
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) {
        resolve({ stdout, stderr });
        return;
      }
      const why = timedOut ? `timed out after ${opts.timeoutMs} ms` : signal ? `killed by ${signal}` : `exited ${code}`;
      const tail = stderrTail(stderr) || stderrTail(stdout.toString('utf8'));
      reject(
        new CellError(ErrorCodes.SETUP_FAILED, `${shown} ${why}${tail ? `: ${tail}` : ''}`, {
          command: shown,
          exitCode: code,
          stderr: tail,
        }),
      );
    });
    child.stdin.on('error', () => {
      /* the child may exit without reading its input; its exit status tells what happened */
    });
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * PATH plus the sbin dirs: mke2fs and friends live in /usr/sbin, which a non-root user's PATH on
 * Debian lacks, and the child's PATH is also where spawn looks the command up.
 */
export function hostSearchPath(env: NodeJS.ProcessEnv = process.env): string {
  const dirs = (env.PATH ?? '').split(':').filter(Boolean);
  for (const extra of SBIN_DIRS) if (!dirs.includes(extra)) dirs.push(extra);
  return dirs.join(':');
}

const SBIN_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** The last lines of a command's output as one line (error messages are one line). */
function stderrTail(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter(Boolean);
  const tail = lines.slice(-STDERR_TAIL_LINES).join(' | ');
  return tail.length <= STDERR_TAIL_CHARS ? tail : `...${tail.slice(-STDERR_TAIL_CHARS)}`;
}
