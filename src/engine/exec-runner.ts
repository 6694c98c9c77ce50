import type { AgentClient } from '../agent/client.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { ExecTerminal } from './exec-terminal.js';
import { TIMEOUT_EXIT_CODE, type ExecResult, type OutputSink } from './output.js';

export interface GuestCommand {
  argv: string[];
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  timeoutSec: number;
  stdin?: AsyncIterable<Buffer>;
  /** Run on a pseudo-terminal: its size, and its resizes while the command runs. */
  terminal?: ExecTerminal;
  signal?: AbortSignal;
}

/**
 * Runs one command through the agent: streams its output to the sink, feeds stdin, enforces the
 * timeout (SIGKILL to the process group, exit 124), and forwards an abort as SIGKILL. With a
 * terminal the command runs on a guest pseudo-terminal and all its output is stdout.
 */
export async function runGuestCommand(agent: AgentClient, cmd: GuestCommand, sink: OutputSink): Promise<ExecResult> {
  if (cmd.argv.length === 0) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'no command given');
  const started = performance.now();
  // While the reader is behind, this exec gets no output credit and its process waits (see
  // ExecHandlers.behind): backpressure, not a buffer, and only on this exec.
  const session = await agent.exec(
    { argv: cmd.argv, env: cmd.env, cwd: cmd.cwd, uid: cmd.uid, gid: cmd.gid, stdin: cmd.stdin !== undefined, tty: cmd.terminal?.size },
    { onStdout: (c) => sink.stdout(c), onStderr: (c) => sink.stderr(c), behind: () => sink.behind?.() },
  );
  cmd.terminal?.attach(session);

  let timedOut = false;
  const timer =
    cmd.timeoutSec > 0
      ? setTimeout(() => {
          timedOut = true;
          session.kill(9).catch(() => {});
        }, cmd.timeoutSec * 1000)
      : undefined;
  const onAbort = () => session.kill(9).catch(() => {});
  cmd.signal?.addEventListener('abort', onAbort, { once: true });

  if (cmd.stdin) void pumpStdin(cmd.stdin, (c) => session.writeStdin(c), () => session.closeStdin());

  try {
    const exit = await session.exit;
    const signal = exit.signal;
    const exitCode = timedOut ? TIMEOUT_EXIT_CODE : signal !== null ? 128 + signal : (exit.exitCode ?? 0);
    return { exitCode, signal, timedOut, durationMs: performance.now() - started, ...(exit.oomKilled && !timedOut ? { oomKilled: true } : {}) };
  } finally {
    if (timer) clearTimeout(timer);
    cmd.signal?.removeEventListener('abort', onAbort);
  }
}

async function pumpStdin(source: AsyncIterable<Buffer>, write: (c: Buffer) => void, close: () => void): Promise<void> {
  try {
    for await (const chunk of source) write(chunk);
  } catch {
    /* the client went away: close stdin all the same */
  }
  try {
    close();
  } catch {
    /* the exec or agent already ended */
  }
}

/** `uid[:gid]` or `root`. Names are resolved against the image when a VM is created (image-users.ts). */
export function parseUser(user: string | undefined): { uid: number; gid: number } {
  if (!user || user === 'root' || user === '0') return { uid: 0, gid: 0 };
  const match = /^(\d+)(?::(\d+))?$/.exec(user);
  if (!match) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `user "${user}" is not supported here: give root or a numeric uid[:gid]`);
  }
  const uid = Number(match[1]);
  return { uid, gid: match[2] !== undefined ? Number(match[2]) : uid };
}
