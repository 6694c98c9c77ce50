import type { Command } from 'commander';
import type { ExecSpec } from '../../sdk/index.js';
import { collect, milliseconds, seconds, UsageError } from '../errors.js';
import { commandExit, passThrough, streamed } from '../context.js';
import { withoutSeparator } from './run.js';

export interface ExecFlags {
  env?: string[];
  workdir?: string;
  user?: string;
  timeout?: number;
  interactive?: boolean;
}

/** `cell exec` flags and command as the SDK's exec spec (pure, unit-tested). */
export function toExecSpec(command: string[], flags: ExecFlags): ExecSpec {
  const cmd = withoutSeparator(command);
  if (cmd.length === 0) throw new UsageError('a command is required: cell exec VM -- CMD...');
  const req: ExecSpec = { cmd };
  if (flags.env?.length) req.env = flags.env;
  if (flags.workdir !== undefined) req.workingDir = flags.workdir;
  if (flags.user !== undefined) req.user = flags.user;
  if (flags.timeout !== undefined) req.commandTimeoutMs = milliseconds(flags.timeout);
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
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Everything after the VM (or after --) is the command, flags included.
Exits with the command's code: 124 after --timeout, 127 not found, 128+N killed by signal N;
1 when cell itself failed (no such VM, VM not running); 130/143 when interrupted (the command is killed).

Examples:
  cell exec box -- uname -a
  cell exec -e DEBUG=1 -w /srv box -- ./serve.sh
  cell exec -i box -- wc -l < /etc/passwd`,
    )
    .action(async (ref: string, command: string[], flags: ExecFlags, cmd: Command) => {
      process.exitCode = await exec(ref, toExecSpec(command, flags), flags, cmd);
    });
}

function exec(ref: string, req: ExecSpec, flags: ExecFlags, cmd: Command): Promise<number> {
  return streamed(cmd, async (client, signal) => {
    try {
      const stdin = flags.interactive ? process.stdin : undefined;
      const result = await client.vms.exec(ref, req, { ...passThrough, signal, stdin });
      return commandExit(result, flags.timeout);
    } finally {
      // Reading stdin keeps the process alive: let go of it once the command has ended.
      if (flags.interactive) process.stdin.destroy();
    }
  });
}
