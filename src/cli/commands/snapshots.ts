import type { Command } from 'commander';
import { resolve } from 'node:path';
import type { Snapshot } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { collect, labelFilters, oneOf, wholeNumber } from '../errors.js';
import { examples } from '../help.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { MAX_POOL_SIZE } from '../../domain/pool.js';
import { ago, bytes, short, table } from '../format.js';
import { transferProgress } from '../transfer-progress.js';

export function register(program: Command): void {
  const snapshot = program
    .command('snapshot')
    .description('capture a running VM (memory, devices, disk); it keeps running. Also: snapshot inspect|pool|rm|export|import|push|pull|prune')
    .summary('capture a running VM; snapshot inspect|pool|rm|export|import|prune')
    .argument('[vm]', 'VM name, id, or id prefix')
    .option('--name <name>', 'name the snapshot (default: <vm>-snap-XXXX)')
    .option('--stop', 'leave the VM stopped afterwards')
    .option('--label <KEY=VALUE>', "a label added to the VM's (repeatable); forks inherit them", collect)
    .addHelpText(
      'after',
      `
Prints the snapshot id. Fork it with 'cell fork', roll the VM back with 'cell restore'.

Examples:
  cell run -d --name db busybox
  cell exec db -- sh -c 'start-my-database &'
  cell snapshot --name db-warm db
  cell fork --count 5 db-warm`,
    )
    .action((vm: string | undefined, flags: { name?: string; stop?: boolean; label?: string[] }, cmd: Command) => {
      if (!vm) return snapshot.help({ error: true });
      return take(vm, flags, cmd);
    });
  const take = withClient(async (client, vm: string, flags: { name?: string; stop?: boolean; label?: string[] }) => {
    const s = await client.snapshots.take(vm, { name: flags.name, stop: flags.stop, labels: flags.label });
    process.stdout.write(`${s.id}\n`);
  });

  snapshot
    .command('inspect')
    .description('show snapshots as JSON')
    .argument('<snapshot...>', 'snapshot names, ids, or id prefixes')
    .addHelpText('after', examples('cell snapshot inspect warm', "cell snapshot inspect warm | jq '.[0].compat'"))
    .action(
      withClient(async (client, refs: string[]) => {
        const found: Snapshot[] = [];
        await forEachRef(refs, async (ref) => void found.push(await client.snapshots.get(ref)));
        process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      }),
    );

  snapshot
    .command('pool')
    .description("keep spares of a snapshot ready, so its forks only resume one (size 0 removes the pool)")
    .argument('<snapshot>', 'snapshot name, id, or id prefix')
    .requiredOption('--size <n>', `spares to keep ready (0 to ${MAX_POOL_SIZE})`, wholeNumber('--size'))
    .option('--warm', "spares that have already run a fork's first steps: forks answer sooner, but each guest ran a few ms past the snapshot point")
    .option('--wait', 'return once the pool is full (prints progress)')
    .addHelpText(
      'after',
      `
Spares are made in the background, one at a time at a low CPU share; a fork takes a ready one (warm
first) and the pool refills. They hold memory (PSS, shown by 'cell snapshot inspect' and 'cell info'),
capped for all pools by poolMemoryMaxBytes in config.json (default: a quarter of the host's memory).
The setting outlives celld. Exact spares start at the snapshot point, as any fork; warm ones have run
an identity refresh and a first command with the snapshot's processes still frozen (docs/pools.md).
${examples('cell snapshot pool --size 10 warm', 'cell snapshot pool --size 10 --warm --wait warm', 'cell fork --count 10 warm', 'cell snapshot pool --size 0 warm')}`,
    )
    .action(
      withClient(async (client, ref: string, flags: { size: number; warm?: boolean; wait?: boolean }) => {
        let s = await client.snapshots.setPool(ref, flags.size, { warm: flags.warm ?? false });
        let shown = -1;
        while (flags.wait && s.pool && s.pool.ready < s.pool.size) {
          if (s.pool.held) throw new CellError(ErrorCodes.RESOURCES_EXHAUSTED, `pool of ${s.name} stopped at ${s.pool.ready}/${s.pool.size}: ${s.pool.held}`);
          if (s.pool.ready !== shown && process.stderr.isTTY) process.stderr.write(`\r${s.pool.ready}/${s.pool.size} spares ready`);
          shown = s.pool.ready;
          await new Promise((r) => setTimeout(r, 200));
          s = await client.snapshots.get(s.id);
        }
        if (shown >= 0 && process.stderr.isTTY) process.stderr.write('\n');
        process.stdout.write(`${s.name}: ${poolText(s.pool)}\n`);
      }),
    );

  snapshot
    .command('rm')
    .description('remove snapshots (refused while VMs or later snapshots stand on them, or a cache entry or template holds them)')
    .argument('<snapshot...>', 'snapshot names, ids, or id prefixes')
    .option(
      '-f, --force',
      'remove it from the list even so: VMs and snapshots on it keep working (its files go with the last of them) and no VM is ever removed; cache entries holding it are dropped',
    )
    .addHelpText('after', examples('cell snapshot rm warm', 'cell snapshot rm -f warm    # VMs forked from warm keep running'))
    .action(
      withClient(async (client, refs: string[], flags: { force?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          const s = await client.snapshots.get(ref);
          await client.snapshots.remove(s.id, { force: flags.force });
          process.stdout.write(`${s.name}\n`);
        });
      }),
    );

  snapshot
    .command('export')
    .description('write a snapshot (memory, devices, flattened disk) to one archive file')
    .argument('<snapshot>', 'snapshot name, id, or id prefix')
    .argument('<file>', 'archive to write')
    .addHelpText('after', examples('cell snapshot export warm /tmp/warm.cellsnap', 'cell snapshot import --name warm2 /tmp/warm.cellsnap'))
    .action(
      withClient(async (client, ref: string, file: string) => {
        const { bytes: size } = await client.snapshots.export(ref, resolve(file));
        process.stdout.write(`${resolve(file)} (${bytes(size)})\n`);
      }),
    );

  snapshot
    .command('import')
    .description('add a snapshot from an archive made by "snapshot export" (on this or another host)')
    .argument('<file>', 'archive to read')
    .option('--name <name>', 'name it (default: its name on the exporting host)')
    .addHelpText('after', examples('cell snapshot import /tmp/warm.cellsnap', 'cell fork warm'))
    .action(
      withClient(async (client, file: string, flags: { name?: string }) => {
        const s = await client.snapshots.import(resolve(file), { name: flags.name });
        process.stdout.write(`${s.id}\n`);
      }),
    );

  snapshot
    .command('push')
    .description('send a snapshot to an OCI registry as an artifact: only the blobs the registry lacks (a child after its parent sends the RAM chunks that changed)')
    .argument('<snapshot>', 'snapshot name, id, or id prefix')
    .argument('<reference>', 'where to: host[:port]/repository:tag')
    .option('--insecure-registry <host[:port]>', 'allow plain http to this registry (repeatable)', collect)
    .addHelpText(
      'after',
      `\nCredentials are cell login's; plain http:// only for loopback registries and those named. The artifact's format: docs/snapshot-artifacts.md.\n${examples('cell snapshot push warm 127.0.0.1:5000/team/warm:v1', 'cell snapshot pull 127.0.0.1:5000/team/warm:v1')}`,
    )
    .action(
      withClient(async (client, ref: string, reference: string, flags: { insecureRegistry?: string[] }) => {
        const progress = await transferProgress(`push ${ref}`);
        const r = await client.snapshots.push(ref, reference, { insecureRegistries: flags.insecureRegistry, onProgress: progress.onProgress }).finally(progress.stop);
        process.stdout.write(
          `${r.reference}@${r.digest}: sent ${r.uploaded.blobs} blobs (${bytes(r.uploaded.bytes)}), ${r.existing.blobs} the registry had (${bytes(r.existing.bytes)})\n`,
        );
      }),
    );

  snapshot
    .command('pull')
    .description('fetch a snapshot pushed with "snapshot push"; refused before its RAM is fetched if this host cannot restore it')
    .argument('<reference>', 'host[:port]/repository:tag or @sha256:...')
    .option('--name <name>', 'name it (default: its name where it was pushed from)')
    .option('--insecure-registry <host[:port]>', 'allow plain http to this registry (repeatable)', collect)
    .addHelpText('after', examples('cell snapshot pull 127.0.0.1:5000/team/warm:v1', 'cell fork warm'))
    .action(
      withClient(async (client, reference: string, flags: { name?: string; insecureRegistry?: string[] }) => {
        const progress = await transferProgress('pull');
        let summary = '';
        const s = await client.snapshots
          .pull(reference, {
            name: flags.name,
            insecureRegistries: flags.insecureRegistry,
            onProgress: progress.onProgress,
            onTransfer: ({ fetched, reused }) => {
              summary = `fetched ${fetched.blobs} blobs (${bytes(fetched.bytes)})${reused.blobs > 0 ? `; ${reused.blobs} (${bytes(reused.bytes)}: RAM chunks, disk layers) came from snapshots here` : ''}`;
            },
          })
          .finally(progress.stop);
        if (summary) process.stderr.write(`${summary}\n`);
        process.stdout.write(`${s.id}\n`);
      }),
    );

  snapshot
    .command('prune')
    .description('remove the oldest snapshots nothing depends on, down to the limits')
    .option('--max-count <n>', 'keep at most this many snapshots', wholeNumber('--max-count'))
    .option('--max-bytes <bytes>', 'keep at most this many bytes of snapshots', wholeNumber('--max-bytes', 'bytes'))
    .addHelpText('after', examples('cell snapshot prune --max-count 10', 'cell snapshot prune --max-bytes 10000000000'))
    .action(
      withClient(async (client, flags: { maxCount?: number; maxBytes?: number }) => {
        const { removed } = await client.snapshots.prune(flags);
        process.stdout.write(removed.map((s) => `${s.name}\n`).join(''));
      }),
    );

  program
    .command('fork')
    .description('start new VMs from a snapshot, each with a fresh identity, sharing its memory copy-on-write')
    .summary('start new VMs from a snapshot')
    .argument('<snapshot>', 'snapshot name, id, or id prefix; or a registry reference (host/repo:tag), pulled on first use')
    .option('--count <n>', 'how many forks (default 1)', wholeNumber('--count'), 1)
    .option('--name <prefix>', 'name forks PREFIX-1, PREFIX-2, ... (numbered on after the highest PREFIX-N a VM has; default PREFIX: the snapshot name)')
    .option('--label <KEY=VALUE>', "a label added to the snapshot's (repeatable)", collect)
    .addHelpText('after', `\nPrints one VM id per line.\n${examples('cell fork warm', 'cell fork --count 10 --name worker warm', 'cell exec worker-3 -- cat /etc/hostname', 'cell fork 127.0.0.1:5000/team/warm:v1')}`)
    .action(
      withClient(async (client, ref: string, flags: { count: number; name?: string; label?: string[] }) => {
        const vms = await client.snapshots.fork(ref, { count: flags.count, name: flags.name, labels: flags.label });
        process.stdout.write(vms.map((v) => `${v.id}\n`).join(''));
      }),
    );

  program
    .command('restore')
    .description('roll a VM back to a snapshot of its own lineage (memory, devices and disk)')
    .summary('roll a VM back to a snapshot')
    .argument('<vm>', 'VM name, id, or id prefix')
    .argument('<snapshot>', 'snapshot name, id, or id prefix')
    .addHelpText('after', examples('cell snapshot --name before db', 'cell exec db -- rm -rf /data', 'cell restore db before'))
    .action(
      withClient(async (client, vm: string, ref: string) => {
        const restored = await client.snapshots.restore(vm, ref);
        process.stdout.write(`${restored.name}\n`);
      }),
    );

  program
    .command('snapshots')
    .description('list snapshots')
    .option('--tree', 'show lineage: which VM and snapshot each came from')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .option('-f, --filter <label=KEY[=VALUE]>', 'only snapshots with this label (repeatable: all must hold)', collect)
    .addHelpText('after', examples('cell snapshots', 'cell snapshots --tree', 'cell snapshots --format json', 'cell snapshots --filter label=team=ml'))
    .action(
      withClient(async (client, flags: { tree?: boolean; format: string; filter?: string[] }) => {
        const list = await client.snapshots.list({ labels: labelFilters(flags.filter) });
        if (flags.format === 'json') process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        else if (flags.tree) process.stdout.write(lineage(list));
        else
          process.stdout.write(
            table(
              // MEMORY: what its RAM file uses on disk of its own, of the guest's RAM (the file is sparse; a
              // clone of its parent's, on XFS or btrfs, counts only the pages it changed).
              ['SNAPSHOT ID', 'NAME', 'FROM VM', 'IMAGE', 'MEMORY (ON DISK)', 'DISK', 'POOL', 'CREATED'],
              list.map((s) => [
                short(s.id),
                s.name,
                s.parentVmName ?? '-',
                s.spec.image,
                `${bytes(s.memoryBytes)} of ${bytes(s.spec.memoryMib * 1024 * 1024)}`,
                bytes(s.diskBytes),
                s.pool ? `${s.pool.ready}/${s.pool.size}${s.pool.warm ? ' warm' : ''}` : '-',
                ago(s.createdAt),
              ]),
            ),
          );
      }),
    );
}

/** `no pool`, or `4 warm spares (3 ready, 120 MiB)`. */
export function poolText(pool: Snapshot['pool']): string {
  if (!pool) return 'no pool';
  const kind = `${pool.size} ${pool.warm ? 'warm' : 'exact'} spare${pool.size === 1 ? '' : 's'}`;
  return `${kind} (${pool.ready} ready${pool.starting ? `, ${pool.starting} on its way` : ''}, ${bytes(pool.memoryBytes)})${pool.held ? `: ${pool.held}` : ''}`;
}

/** image -> snapshot -> child snapshots, as an indented tree. */
export function lineage(list: Snapshot[]): string {
  const children = new Map<string | null, Snapshot[]>();
  for (const s of list) {
    const key = s.parentSnapshot && list.some((p) => p.id === s.parentSnapshot) ? s.parentSnapshot : null;
    children.set(key, [...(children.get(key) ?? []), s]);
  }
  const lines: string[] = [];
  const walk = (parent: string | null, depth: number) => {
    for (const s of children.get(parent) ?? []) {
      const origin = depth === 0 ? ` (image ${s.spec.image})` : '';
      lines.push(`${'  '.repeat(depth)}${depth ? '└─ ' : ''}${s.name} ${short(s.id)} from VM ${s.parentVmName ?? '?'}${origin}`);
      walk(s.id, depth + 1);
    }
  };
  walk(null, 0);
  return lines.join('\n') + (lines.length ? '\n' : '');
}
