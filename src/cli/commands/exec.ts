import type { Command } from 'commander';
import type { ExecSpec } from '../../sdk/index.js';
import { collect, milliseconds, seconds, UsageError } from '../errors.js';
import { commandExit, passThrough, streamed } from '../context.js';
import { withoutSeparator } from './run.js';
import { checkTtyFlags, hostSize, rawTerminal, type HostTty } from '../terminal.js';

export interface ExecFlags {
  env?: string[];
  workdir?: string;
  user?: string;
  timeout?: number;
  interactive?: boolean;
  tty?: boolean;
}

/** `cell exec` flags and command as the SDK's exec spec (pure, unit-tested). */
export function toExecSpec(command: string[], flags: ExecFlags, host: HostTty = process): ExecSpec {
  const cmd = withoutSeparator(command);
  if (cmd.length === 0) throw new UsageError('a command is required: cell exec VM -- CMD...');
  const req: ExecSpec = { cmd };
  if (flags.env?.length) req.env = flags.env;
  if (flags.workdir !== undefined) req.workingDir = flags.workdir;
  if (flags.user !== undefined) req.user = flags.user;
  if (flags.timeout !== undefined) req.commandTimeoutMs = milliseconds(flags.timeout);
  if (flags.tty) {
    checkTtyFlags(flags, host);
    Object.assign(req, { tty: true }, hostSize(host));
  }
  return req;
}

export function register(program: Command): void {
  program
    .command('exec')
    .description('run a command in a running VM')
    .argument('<vm>', 'VM name, id, or unique id prefix (3+ characters)')
    .argument('<command...>', 'command and arguments, verbatim')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', "working directory (default: the VM's)")
    .option('-u, --user <user[:group]>', "run as this user: a name from the image or uid[:gid] (default: the VM's)")
    .option('--timeout <sec>', 'kill the command after this many seconds (exit 124)', seconds('--timeout'))
    .option('-i, --interactive', "send cell's stdin to the command (its end closes the command's stdin)")
    .option('-t, --tty', "run the command on a terminal in the guest (with -i: this terminal in raw mode, its size and resizes passed on, Ctrl-C to the guest's foreground process)")
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Everything after the VM (or after --) is the command, flags included.
Exits with the command's code: 124 after --timeout, 127 not found, 128+N killed by signal N;
1 when cell itself failed (no such VM, VM not running); 130/143 when interrupted (the command is killed).
With -t the command's stdout and stderr are one stream (the guest's terminal, CRLF line ends);
-it needs a terminal ("the input device is not a TTY" otherwise, as docker says).

Examples:
  cell exec box -- uname -a
  cell exec -e DEBUG=1 -w /srv box -- ./serve.sh
  cell exec -i box -- wc -l < /etc/passwd
  cell exec -it box -- sh                 # an interactive shell; exit (or Ctrl-D) ends it
  cell exec -it box -- top                # full-screen programs follow the window's size`,
    )
    .action(async (ref: string, command: string[], flags: ExecFlags, cmd: Command) => {
      process.exitCode = await exec(ref, toExecSpec(command, flags), flags, cmd);
    });
}

function exec(ref: string, req: ExecSpec, flags: ExecFlags, cmd: Command): Promise<number> {
  return streamed(cmd, async (client, signal) => {
    let execId: string | undefined;
    // With -t: raw mode from here until the command ended, whatever ends it (restored in finally
    // and, should the process end another way, on exit).
    const terminal = req.tty
      ? rawTerminal(process, (size) => {
          if (execId) client.vms.resizeExec(execId, size).catch(() => {}); // the exec may have just ended
        })
      : undefined;
    try {
      const stdin = flags.interactive ? process.stdin : undefined;
      const result = await client.vms.exec(ref, req, {
        ...passThrough,
        signal,
        stdin,
        onExec: (id) => {
          execId = id;
          // The window may have changed while the command was starting.
          const now = hostSize(process);
          if (req.tty && (now.cols !== req.cols || now.rows !== req.rows)) client.vms.resizeExec(id, now).catch(() => {});
        },
      });
      return commandExit(result, flags.timeout);
    } finally {
      terminal?.restore();
      // Reading stdin keeps the process alive: let go of it once the command has ended.
      if (flags.interactive) process.stdin.destroy();
    }
  });
}
