import type { AgentClient } from '../agent/client.js';
import { DEFAULT_READY_INTERVAL_MS, DEFAULT_READY_TIMEOUT_SEC, type ReadyCheck } from '../domain/action.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { runGuestCommand } from './exec-runner.js';

export interface ReadyContext {
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  /** Settles if the process being waited for ends first: a server that crashed, or one that put itself in the background. */
  serviceExit?: Promise<number>;
  signal?: AbortSignal;
}

/**
 * Runs the check until it exits 0. Fails when time runs out, or at once when the service it waits
 * for exits non-zero first, with the last attempt's output in the message. A service that exits 0
 * is taken to have daemonized (`httpd`, `nginx` without their foreground flags), so the check goes on.
 */
export async function awaitReady(agent: AgentClient, check: ReadyCheck, ctx: ReadyContext): Promise<{ attempts: number; ms: number }> {
  const started = performance.now();
  const timeoutMs = (check.timeoutSec ?? DEFAULT_READY_TIMEOUT_SEC) * 1000;
  const interval = check.intervalMs ?? DEFAULT_READY_INTERVAL_MS;
  let serviceCode: number | null = null;
  void ctx.serviceExit?.then(
    (code) => (serviceCode = code),
    () => {},
  );
  let attempts = 0;
  let lastOutput = '';
  let lastCode = 0;
  for (;;) {
    if (ctx.signal?.aborted) throw new CellError(ErrorCodes.CANCELLED, 'cancelled while waiting for the ready check');
    attempts++;
    const chunks: Buffer[] = [];
    const collect = (c: Buffer) => {
      if (chunks.reduce((n, x) => n + x.length, 0) < 4096) chunks.push(c);
    };
    const remainingSec = Math.max(1, Math.ceil((timeoutMs - (performance.now() - started)) / 1000));
    const result = await runGuestCommand(
      agent,
      { argv: check.cmd, env: ctx.env, cwd: ctx.cwd, uid: ctx.uid, gid: ctx.gid, timeoutSec: remainingSec, signal: ctx.signal },
      { stdout: collect, stderr: collect },
    );
    if (result.exitCode === 0) return { attempts, ms: performance.now() - started };
    lastCode = result.exitCode;
    lastOutput = Buffer.concat(chunks).toString('utf8').trim().split('\n').slice(-3).join(' | ');
    const elapsed = performance.now() - started;
    const detail = `last attempt exited ${lastCode}${lastOutput ? `: ${lastOutput}` : ''}`;
    if (serviceCode !== null && serviceCode !== 0) {
      throw new CellError(ErrorCodes.READY_CHECK_FAILED, `the service exited with code ${serviceCode} before the ready check passed (${detail})`, {
        attempts,
        serviceExitCode: serviceCode,
      });
    }
    if (elapsed + interval >= timeoutMs) {
      const daemonized = serviceCode === 0 ? '; the service exited 0 early, as a server that daemonizes does' : '';
      throw new CellError(ErrorCodes.READY_CHECK_FAILED, `the ready check did not pass within ${timeoutMs / 1000} s after ${attempts} attempts (${detail}${daemonized})`, {
        attempts,
      });
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}
