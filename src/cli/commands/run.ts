import { Command } from 'commander';
import type { RunRequest } from '../../api/schemas.js';
import { collect, EXIT_RUN_FAILED, reportError, seconds, wholeNumber } from '../errors.js';
import { commandExit, connect, interruptible, passThrough } from '../context.js';

export interface RunFlags {
  name?: string;
  cpus?: number;
  memory?: number;
  env?: string[];
  workdir?: string;
  user?: string;
  timeout?: number;
  rm?: boolean;
  detach?: boolean;
  from?: string;
}

/** `cell run` flags and operands as an API request (pure, unit-tested). */
export function toRunRequest(args: string[], flags: RunFlags): RunRequest {
  const operands = withoutSeparator(args);
  const [first, ...rest] = operands;
  const req: RunRequest = flags.from
    ? { fromSnapshot: flags.from, cmd: operands }
    : { image: first, cmd: withoutSeparator(rest) };
  if (!flags.from && !first) throw new Error('an image is required: cell run IMAGE [-- CMD...]');
  if (flags.name !== undefined) req.name = flags.name;
  if (flags.cpus !== undefined) req.cpus = flags.cpus;
  if (flags.memory !== undefined) req.memoryMib = flags.memory;
  if (flags.env?.length) req.env = flags.env;
  if (flags.workdir !== undefined) req.workingDir = flags.workdir;
  if (flags.user !== undefined) req.user = flags.user;
  if (flags.timeout !== undefined) req.timeoutSec = flags.timeout;
  if (flags.rm) req.autoRemove = true;
  return req;
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('boot a VM from an image (or fork a snapshot) and run a command in it')
    .argument('[image]', 'image to boot, e.g. busybox (omit with --from)')
    .argument('[command...]', 'command and arguments (default: the image\'s entrypoint/cmd)')
    .option('--name <name>', 'name the VM (default: a random name)')
    .option('--cpus <n>', 'virtual CPUs (default 1)', wholeNumber('--cpus', ''))
    .option('--memory <MiB>', 'guest memory in MiB (default 256)', wholeNumber('--memory', 'MiB'))
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [])
    .option('-w, --workdir <dir>', 'working directory of the command')
    .option('-u, --user <uid[:gid]>', 'run as this user (root or numeric)')
    .option('--timeout <sec>', 'kill the command after this many seconds (exit 124)', seconds('--timeout'))
    .option('--rm', 'remove the VM when the command ends')
    .option('-d, --detach', 'print the VM id and leave it running (exec into it later)')
    .option('--from <snapshot>', 'fork this snapshot instead of booting an image')
    .passThroughOptions()
    .addHelpText(
      'after',
      `
The VM stops when the command ends (with --rm it is also removed); with -d it keeps running
until 'cell stop'. Output streams as it is produced; cell exits with the command's code.

Exit codes: the command's own; 124 after --timeout; 127 command not found; 128+N killed by
signal N; 125 the VM could not be created or booted (the command never ran).

Examples:
  cell run --rm busybox -- sh -c 'echo hello from $(hostname)'
  cell run -d --name box --memory 512 busybox
  cell run --rm --timeout 5 -e MODE=test busybox -- ./run-tests.sh
  cell run --rm --from warm -- cat /etc/hostname`,
    )
    .action(async (image: string | undefined, command: string[], flags: RunFlags, cmd: Command) => {
      let req: RunRequest;
      try {
        req = toRunRequest([...(image !== undefined ? [image] : []), ...command], flags);
      } catch (err) {
        reportError(err);
        process.exitCode = EXIT_RUN_FAILED;
        return;
      }
      const client = await connect(cmd);
      try {
        if (flags.detach) {
          const vm = await client.vms.create(req);
          process.stdout.write(`${vm.id}\n`);
          return;
        }
        const interrupt = interruptible();
        let started = false;
        try {
          const result = await client.run(req, { ...passThrough, signal: interrupt.signal, onRunning: () => (started = true) });
          process.exitCode = commandExit(result, flags.timeout);
        } catch (err) {
          const code = interrupt.interruptedCode();
          if (code !== null) {
            process.exitCode = code;
            return;
          }
          reportError(err);
          process.exitCode = started ? 1 : EXIT_RUN_FAILED;
        } finally {
          interrupt.dispose();
        }
      } catch (err) {
        reportError(err);
        process.exitCode = EXIT_RUN_FAILED;
      } finally {
        client.close();
      }
    });
}

/** With pass-through options commander keeps the `--` separator: it is not part of the command. */
export function withoutSeparator(args: string[]): string[] {
  return args[0] === '--' ? args.slice(1) : args;
}
