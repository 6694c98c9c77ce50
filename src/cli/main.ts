import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { EXIT_FAILURE, EXIT_RUN_FAILED, isCommanderExit, reportError } from './errors.js';
import { groupsFor, subcommandOf } from './registry.js';

// `cell` is on the hot path of every sandbox command: it registers only the subcommand being run
// (registry.ts), and runs from one bundled file with V8's code cache (scripts/bundle-cli.mjs).
const args = process.argv.slice(2);

// A closed stdout (`cell ps | head -1`) ends cell the way SIGPIPE ends other programs. Exiting
// also closes the connection to celld, which then kills a command still running for us.
const EXIT_SIGPIPE = 141;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(EXIT_SIGPIPE);
  throw err;
});

function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

const program = new Command('cell')
  .description('cellvm: microVM sandboxes you can snapshot and fork in milliseconds')
  .version(args.includes('-V') || args.includes('--version') ? version() : '', '-V, --version', 'print the version')
  .option('--home <dir>', 'state directory; sets CELL_HOME (default ~/.local/share/cellvm, root: /var/lib/cellvm)')
  .enablePositionalOptions()
  .exitOverride()
  .addHelpText(
    'after',
    `
Quick start:
  cell run --rm busybox -- echo hello    boot a VM, run a command, exit with its code
  cell run -d --name box busybox         a VM that stays up; then: cell exec box -- uname -a

More: cell snapshot --name warm box; cell fork --count 3 warm. 'cell COMMAND --help' for examples.`,
  );

program.hook('preAction', (_this, action) => {
  const home = (action.optsWithGlobals() as { home?: string }).home;
  if (home) process.env.CELL_HOME = home;
});

async function main(): Promise<void> {
  for (const group of groupsFor(args)) {
    program.commandsGroup(group.heading);
    (await group.load()).register(program);
  }
  program.commandsGroup('Help:');
  program.helpCommand(true);

  // `cell run` reports its own failures with 125 like docker, so scripts can tell them apart from
  // the command's exit code; every other command uses 1.
  const failure = subcommandOf(args) === 'run' ? EXIT_RUN_FAILED : EXIT_FAILURE;
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    if (isCommanderExit(err)) process.exitCode = err.exitCode === 0 ? 0 : failure;
    else {
      reportError(err);
      process.exitCode = failure;
    }
  }
}

// No top-level await: the bundle is a script (CommonJS), which V8 can cache compiled.
void main();
