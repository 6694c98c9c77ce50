import type { Command } from 'commander';
import type { DiskUsage, Info } from '../../sdk/index.js';
import { withClient } from '../action.js';
import { oneOf } from '../errors.js';
import { examples } from '../help.js';
import { bytes, table } from '../format.js';
import { setupProgress } from '../setup-progress.js';

export function register(program: Command): void {
  program
    .command('info')
    .description('show the accelerator (and why), QEMU, guest kernel, CELL_HOME and counts')
    .summary('show the accelerator, versions and paths')
    .option('--format <format>', 'text or json', oneOf('--format', ['text', 'json']), 'text')
    .addHelpText('after', examples('cell info', "cell info --format json | jq -r .accelerator"))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const info = await client.info();
        process.stdout.write(flags.format === 'json' ? JSON.stringify(info, null, 2) + '\n' : infoText(info));
      }),
    );

  const system = program.command('system').description("celld's home as a whole: system df").summary("celld's home as a whole");
  system
    .command('df')
    .description('what celld\'s home holds by kind: logical bytes (file sizes; a RAM file counts whole) and really used ones (allocated blocks)')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText(
      'after',
      `\nEach file counts once, and on a file system with reflinks (XFS, btrfs) each block: there a snapshot's RAM
shares the pages it did not change with its parent's. A VM's RAM is in memory (/dev/shm), not here. The
build cache's bytes are its snapshots' (counted under Snapshots, not again in the total).\n${examples('cell system df', 'cell system df --format json | jq .snapshots')}`,
    )
    .action(
      withClient(async (client, flags: { format: string }) => {
        const usage = await client.diskUsage();
        process.stdout.write(flags.format === 'json' ? JSON.stringify(usage, null, 2) + '\n' : dfText(usage));
      }),
    );

  program
    .command('setup')
    .description('prepare this host: packages, guest kernel, agent, initramfs, busybox image, accelerator probe')
    .summary('prepare this host (run does it on demand)')
    .option('--reprobe', 'probe the accelerator again instead of using the cached verdict')
    .addHelpText(
      'after',
      `
Idempotent: a second run does no work. 'cell run' does the same on demand, so this is optional;
run it once ahead of time because the first set-up of a host can take minutes (apt, downloads).
Progress goes to stderr, the summary to stdout.
${examples('cell setup', 'cell setup --reprobe    # after enabling KVM')}`,
    )
    .action(
      withClient(async (client, flags: { reprobe?: boolean }) => {
        const progress = setupProgress();
        try {
          await client.setup({ reprobe: flags.reprobe, onProgress: (e) => progress.onProgress(e) });
        } finally {
          progress.stop();
        }
        const info = await client.info();
        process.stdout.write(`ready: accelerator ${info.accelerator} (${info.acceleratorReason}), QEMU ${info.qemuVersion}, guest kernel ${info.guestKernel}\n`);
      }),
    );
}

/** `cell info` as aligned lines. */
export function infoText(info: Info): string {
  // Always "N running, M stopped", then any other state that has VMs (starting, ...).
  const counts: Record<string, number> = { running: 0, stopped: 0, ...info.vms };
  const vms = Object.entries(counts)
    .filter(([state, n]) => n > 0 || state === 'running' || state === 'stopped')
    .map(([state, n]) => `${n} ${state}`)
    .join(', ');
  const rows: [string, string | number][] = [
    ['cellvm', info.version],
    ['Accelerator', `${info.accelerator} (${info.acceleratorReason})`],
    ['QEMU', info.qemuVersion],
    ['Guest kernel', info.guestKernel],
    ['CELL_HOME', info.home],
    ['Cache', info.cacheDir],
    ['VMs', vms],
    ['Network', info.network.available ? `VMs online by default (${info.network.reason})` : `none: ${info.network.reason}`],
    ['Images', `${info.images}${info.imageCacheMaxBytes !== null ? ` (least recently used ones evicted past ${bytes(info.imageCacheMaxBytes)})` : ''}`],
    ['Spare forks', `${info.spares} (restored, paused: the next fork of their snapshot resumes one; CELL_SPARES=0 turns the automatic ones off)`],
    [
      'Pools',
      `${info.pools.pools} snapshot${info.pools.pools === 1 ? '' : 's'}, ${info.pools.ready} spare${info.pools.ready === 1 ? '' : 's'} ready; spares hold ${bytes(info.pools.memoryBytes)} of ${bytes(info.pools.memoryMaxBytes)} (cell snapshot pool)`,
    ],
    ['Daemon pid', info.daemonPid],
    ['Remote API', info.remote ? `${info.remote.url}${info.remote.fingerprint ? ` (TLS certificate SHA-256 ${info.remote.fingerprint})` : ''}; tokens: cell token ls` : 'off (celld --listen HOST:PORT serves it: docs/remote.md)'],
  ];
  return rows.map(([k, v]) => `${`${k}:`.padEnd(14)}${v}\n`).join('');
}

/** `cell system df` as a table. */
export function dfText(u: DiskUsage): string {
  const r = (kind: string, count: string, x: { logicalBytes: number; usedBytes: number }) => [kind, count, bytes(x.logicalBytes), bytes(x.usedBytes)];
  return table(
    ['TYPE', 'COUNT', 'SIZE', 'ON DISK'],
    [
      r('Images', String(u.images.count), u.images),
      r('Snapshots', u.snapshots.retired ? `${u.snapshots.count} (+${u.snapshots.retired} removed, held)` : String(u.snapshots.count), u.snapshots),
      r('VM disks', String(u.vms.count), u.vms),
      r('Volumes', String(u.volumes.count), u.volumes),
      r('Build cache', String(u.buildCache.count), u.buildCache),
      r('Total', '', u.total),
    ],
  ) + `Snapshot RAM: stored ${u.snapshotRam.mode === 'shared' ? 'by what changed' : 'whole'} (${u.snapshotRam.reason})\n`;
}
