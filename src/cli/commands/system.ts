import type { Command } from 'commander';
import { withClient } from '../action.js';

export function registerSystemCommands(program: Command): void {
  program
    .command('info')
    .description('show the accelerator (and why), QEMU, guest kernel, CELL_HOME and counts')
    .option('--format <format>', 'text or json', 'text')
    .action(
      withClient(async (client, flags: { format: string }) => {
        const info = await client.info();
        if (flags.format === 'json') {
          process.stdout.write(JSON.stringify(info, null, 2) + '\n');
          return;
        }
        const vms = Object.entries(info.vms).map(([state, n]) => `${n} ${state}`).join(', ') || 'none';
        process.stdout.write(
          [
            `cellvm:        ${info.version}`,
            `Accelerator:   ${info.accelerator} (${info.acceleratorReason})`,
            `QEMU:          ${info.qemuVersion}`,
            `Guest kernel:  ${info.guestKernel}`,
            `CELL_HOME:     ${info.home}`,
            `Cache:         ${info.cacheDir}`,
            `VMs:           ${vms}`,
            `Images:        ${info.images}`,
            `Daemon pid:    ${info.daemonPid}`,
          ].join('\n') + '\n',
        );
      }),
    );

  program
    .command('setup')
    .description('prepare this host: Debian packages, guest kernel, agent, initramfs, busybox image, accelerator probe')
    .option('--reprobe', 'probe the accelerator again instead of using the cached verdict')
    .addHelpText('after', '\nIdempotent: a second run does no work. Other commands run it on demand.')
    .action(
      withClient(async (client, flags: { reprobe?: boolean }) => {
        await client.setup({
          reprobe: flags.reprobe,
          onProgress: (e) => process.stdout.write(`[${e.step}] ${e.status}${e.detail ? `: ${e.detail}` : ''}\n`),
        });
        const info = await client.info();
        process.stdout.write(`ready: accelerator ${info.accelerator} (${info.acceleratorReason})\n`);
      }),
    );
}
