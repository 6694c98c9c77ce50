import { Command } from 'commander';
import { registerExec } from './commands/exec.js';
import { registerImageCommands } from './commands/images.js';
import { registerRun } from './commands/run.js';
import { registerSnapshotCommands } from './commands/snapshots.js';
import { registerSystemCommands } from './commands/system.js';
import { registerVmCommands } from './commands/vms.js';

const program = new Command('cell')
  .description('cellvm: microVM sandboxes you can snapshot and fork in milliseconds')
  .version('0.1.0')
  .option('--home <dir>', 'state directory (default: $CELL_HOME, /var/lib/cellvm as root)')
  .enablePositionalOptions()
  .addHelpText(
    'after',
    `
Quick start:
  cell run --rm busybox -- echo hello          boot a VM, run a command, exit with its code
  cell run -d --name box busybox               a VM that stays up; then: cell exec box -- sh -c '...'
  cell snapshot --name warm box                capture it; then: cell fork --count 3 warm`,
  );

program.hook('preAction', (_this, action) => {
  const home = (action.optsWithGlobals() as { home?: string }).home;
  if (home) process.env.CELL_HOME = home;
});

registerRun(program);
registerExec(program);
registerVmCommands(program);
registerSnapshotCommands(program);
registerImageCommands(program);
registerSystemCommands(program);

await program.parseAsync(process.argv);
