import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { VolumeView } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { byteSize, collect, oneOf, UsageError } from '../errors.js';
import { ago, bytes, table } from '../format.js';
import { examples } from '../help.js';

export function register(program: Command): void {
  const volume = program
    .command('volume')
    .description('named volumes: sparse ext4 disks that outlive VMs (run -v NAME:/path[:ro]); one VM writes a volume at a time')
    .summary('create, list, inspect, remove and prune named volumes');

  volume
    .command('create')
    .description('make an empty named volume (run -v makes a missing one too, with the default size)')
    .argument('<name>', '1-63 letters, digits, _ . -')
    .option('--size <size>', 'its size, e.g. 2G (default 10G; sparse: the host gives it what is written)', byteSize('--size'))
    .option('--label <KEY=VALUE>', 'a label (repeatable)', collect)
    .addHelpText('after', examples('cell volume create pip-cache', 'cell volume create --size 50G db-data', 'cell run --rm -v pip-cache:/root/.cache/pip busybox -- ls /root/.cache/pip'))
    .action(
      withClient(async (client, name: string, flags: { size?: number; label?: string[] }) => {
        const made = await client.volumes.create(name, { ...(flags.size !== undefined ? { sizeBytes: flags.size } : {}), ...(flags.label ? { labels: flags.label } : {}) });
        process.stdout.write(`${made.name}\n`);
      }),
    );

  volume
    .command('ls')
    .description('list volumes with their sizes and the VMs that mount them')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell volume ls', 'cell volume ls --format json'))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const list = await client.volumes.list();
        if (flags.format === 'json') return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        process.stdout.write(volumeTable(list));
      }),
    );

  volume
    .command('inspect')
    .description('show volumes as JSON (with every VM that mounts each)')
    .argument('<name...>', 'volume names')
    .addHelpText('after', examples('cell volume inspect pip-cache'))
    .action(
      withClient(async (client, names: string[]) => {
        const found: VolumeView[] = [];
        await forEachRef(names, async (name) => void found.push(await client.volumes.get(name)));
        process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      }),
    );

  volume
    .command('rm')
    .description('remove volumes and their contents: refused while a VM runs with one; while a stopped VM mounts one, refused unless -f')
    .argument('<name...>', 'volume names')
    .option('-f, --force', 'remove a volume stopped VMs mount (their next start fails until it exists again)')
    .addHelpText('after', examples('cell volume rm pip-cache', 'cell volume rm -f db-data'))
    .action(
      withClient(async (client, names: string[], flags: { force?: boolean }) => {
        await forEachRef(names, async (name) => {
          await client.volumes.remove(name, { force: flags.force });
          process.stdout.write(`${name}\n`);
        });
      }),
    );

  volume
    .command('export')
    .description("write a volume (its whole ext4 image, sparse) to a tar another host imports; refused while a VM writes it")
    .argument('<name>', 'volume name')
    .argument('<file>', 'archive to write (replaced if it exists)')
    .addHelpText('after', examples('cell volume export db-data /tmp/db-data.tar', 'scp /tmp/db-data.tar other: && ssh other cell volume import /tmp/db-data.tar'))
    .action(
      withClient(async (client, name: string, file: string) => {
        const { bytes: size } = await client.volumes.export(name, resolve(file));
        process.stdout.write(`${resolve(file)} (${bytes(size)})\n`);
      }),
    );

  volume
    .command('import')
    .description('add a volume from an archive made by "volume export" (on this or another host)')
    .argument('<file>', 'archive to read')
    .option('--name <name>', 'name it (default: its name on the exporting host)')
    .addHelpText('after', examples('cell volume import /tmp/db-data.tar', 'cell volume import --name db-copy /tmp/db-data.tar'))
    .action(
      withClient(async (client, file: string, flags: { name?: string }) => {
        process.stdout.write(`${(await client.volumes.import(resolve(file), { name: flags.name })).name}\n`);
      }),
    );

  volume
    .command('prune')
    .description('remove every volume no VM mounts, contents and all (asks first unless -f)')
    .option('-f, --force', 'do not ask')
    .addHelpText('after', examples('cell volume prune', 'cell volume prune -f'))
    .action(
      withClient(async (client, flags: { force?: boolean }) => {
        if (!flags.force) {
          const unused = (await client.volumes.list()).filter((v) => v.users.length === 0);
          if (unused.length === 0) return;
          if (!(await confirm(`Remove ${unused.length} volume(s) no VM mounts (${unused.map((v) => v.name).join(', ')}) and everything in them? [y/N] `))) {
            throw new UsageError('nothing removed (say y, or give -f)');
          }
        }
        for (const name of await client.volumes.prune()) process.stdout.write(`${name}\n`);
      }),
    );
}

function volumeTable(list: VolumeView[]): string {
  return table(
    ['NAME', 'SIZE', 'USED', 'CREATED', 'MOUNTED BY'],
    list.map((v) => [v.name, bytes(v.sizeBytes), bytes(v.usedBytes), ago(v.createdAt), v.users.map((u) => `${u.name}:${u.path}${u.readOnly ? ':ro' : ''}${u.running ? '' : ' (stopped)'}`).join(', ')]),
  );
}

/** A y/N question on the terminal; no terminal (a script): no. */
async function confirm(question: string): Promise<boolean> {
  if (!process.stdin.isTTY) return false;
  const { createInterface } = await import('node:readline/promises');
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}
