import { Command } from 'commander';
import { collect, reportError, seconds } from '../errors.js';
import { commandExit, connect, interruptible, passThrough } from '../context.js';
import { withoutSeparator } from './run.js';

export function registerExec(program: Command): void {
  program
    .command('exec')
    .description('run a command in a running VM')
    .argument('<vm>', 'VM name, id, or unique id prefix (3+ characters)')
    .argument('<command...>', 'command and arguments')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory (default: the VM\'s)')
    .option('-u, --user <uid[:gid]>', 'run as this user (root or numeric)')
    .option('--timeout <sec>', 'kill the command after this many seconds (exit 124)', seconds('--timeout'))
    .option('-i, --interactive', 'send this terminal\'s stdin to the command')
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Exits with the command's code (124 after --timeout, 127 not found, 128+N killed by signal N).

Examples:
  cell exec box -- uname -a
  cell exec -e DEBUG=1 -w /srv box -- ./serve.sh
  cell exec -i box -- sh -c 'wc -l' < /etc/passwd`,
    )
    .action(async (ref: string, command: string[], flags: { env: string[]; workdir?: string; user?: string; timeout?: number; interactive?: boolean }, cmd: Command) => {
      const client = await connect(cmd).catch((err: unknown) => {
        reportError(err);
        process.exitCode = 1;
        return null;
      });
      if (!client) return;
      const interrupt = interruptible();
      try {
        const result = await client.exec(
          ref,
          { cmd: withoutSeparator(command), env: flags.env.length ? flags.env : undefined, workingDir: flags.workdir, user: flags.user, timeoutSec: flags.timeout },
          { ...passThrough, signal: interrupt.signal, stdin: flags.interactive ? (process.stdin as AsyncIterable<Buffer>) : undefined },
        );
        process.exitCode = commandExit(result, flags.timeout);
      } catch (err) {
        const code = interrupt.interruptedCode();
        if (code !== null) process.exitCode = code;
        else {
          reportError(err);
          process.exitCode = 1;
        }
      } finally {
        interrupt.dispose();
        client.close();
        if (flags.interactive) process.stdin.destroy();
      }
    });
}
