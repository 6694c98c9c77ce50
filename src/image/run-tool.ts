import { spawn } from 'node:child_process';
import { CellError, ErrorCodes, type ErrorCode } from '../domain/errors.js';

/**
 * Runs a host tool (mke2fs, mknod, setfattr, zstd) to completion. PATH gets the sbin dirs, which a
 * non-root PATH on Debian lacks. A missing tool is HOST_MISSING_DEPENDENCY naming its package;
 * a failure carries `code` and the tail of the tool's stderr.
 */
const SBIN = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

export function toolPath(): string {
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const d of SBIN) if (!dirs.includes(d)) dirs.push(d);
  return dirs.join(':');
}

export function runTool(
  cmd: string,
  args: readonly string[],
  opts: { code: ErrorCode; pkg: string; input?: string; cwd?: string; env?: NodeJS.ProcessEnv },
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, PATH: toolPath(), ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 4000) stderr += c.toString('utf8');
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(
        e.code === 'ENOENT'
          ? new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `command not found: ${cmd} (apt-get install ${opts.pkg})`)
          : new CellError(opts.code, `cannot run ${cmd}: ${e.message}`),
      );
    });
    child.on('close', (code, signal) => {
      if (code === 0) resolve({ stdout, stderr });
      else reject(new CellError(opts.code, `${cmd} ${signal ? `killed by ${signal}` : `exited ${code}`}: ${stderr.trim().slice(-1500)}`));
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}
