import type { Command } from 'commander';
import type { NetworkView } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { oneOf } from '../errors.js';
import { ago, table } from '../format.js';
import { examples } from '../help.js';

export function register(program: Command): void {
  const network = program
    .command('network')
    .description('networks VMs are on: the built-in default one (online, VMs isolated from each other) and named ones (VMs reach each other by name)')
    .summary('create, list, inspect and remove networks; connect and disconnect VMs');

  network
    .command('create')
    .description('make a named network: its VMs reach each other by name and, unless --internal, the outside through NAT')
    .argument('<name>', 'up to 32 of a-z, 0-9, _ . -')
    .option('--subnet <cidr>', 'its IPv4 subnet, /8 to /28 (default: the first free 10.90+.x.0/24)')
    .option('--internal', 'no way out: its VMs reach each other and nothing else')
    .addHelpText(
      'after',
      `
A VM on several networks goes out through the first one that has a way out. VMs of different
networks never reach each other, and no VM reaches the host itself or 169.254.169.254.
${examples('cell network create backend', 'cell run -d --name db --network backend busybox', 'cell run --rm --network backend busybox -- nslookup db', 'cell network create --internal --subnet 10.77.0.0/24 vault')}`,
    )
    .action(
      withClient(async (client, name: string, flags: { subnet?: string; internal?: boolean }) => {
        const created = await client.networks.create({ name, ...(flags.subnet ? { subnet: flags.subnet } : {}), ...(flags.internal ? { internal: true } : {}) });
        process.stdout.write(`${created.name} ${created.subnet}\n`);
      }),
    );

  network
    .command('ls')
    .description('list networks with their subnets and VMs')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell network ls', 'cell network ls --format json'))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const list = await client.networks.list();
        if (flags.format === 'json') return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        process.stdout.write(networkTable(list));
      }),
    );

  network
    .command('inspect')
    .description('show networks as JSON (with each VM and its address)')
    .argument('<name...>', 'network names')
    .addHelpText('after', examples('cell network inspect backend', "cell network inspect default | jq '.[0].vms'"))
    .action(
      withClient(async (client, names: string[]) => {
        const found: NetworkView[] = [];
        await forEachRef(names, async (name) => void found.push(await client.networks.get(name)));
        process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      }),
    );

  network
    .command('rm')
    .description('remove networks (refused while a VM is on one: it names them)')
    .argument('<name...>', 'network names')
    .addHelpText('after', examples('cell network rm backend vault'))
    .action(
      withClient(async (client, names: string[]) => {
        await forEachRef(names, async (name) => {
          await client.networks.remove(name);
          process.stdout.write(`${name}\n`);
        });
      }),
    );

  network
    .command('prune')
    .description('remove every named network no VM is on')
    .addHelpText('after', examples('cell network prune'))
    .action(
      withClient(async (client) => {
        for (const name of await client.networks.prune()) process.stdout.write(`${name}\n`);
      }),
    );

  network
    .command('connect')
    .description('put a VM on a network: a running VM at once (its NIC stays as it is; the host side changes), a stopped one when it starts')
    .argument('<network>', 'network name')
    .argument('<vm>', 'VM name, id, or id prefix')
    .addHelpText('after', examples('cell network connect backend web', 'cell exec web -- nslookup db'))
    .action(
      withClient(async (client, name: string, vm: string) => {
        const updated = await client.networks.connect(name, vm);
        const address = updated.network?.networks.find((n) => n.name === name)?.address;
        process.stdout.write(`${updated.name} ${name}${address ? ` ${address}` : ''}\n`);
      }),
    );

  network
    .command('disconnect')
    .description("take a VM off a network (not its only one: a VM keeps its NIC, so it stays on at least one)")
    .argument('<network>', 'network name')
    .argument('<vm>', 'VM name, id, or id prefix')
    .addHelpText('after', examples('cell network disconnect backend web'))
    .action(
      withClient(async (client, name: string, vm: string) => {
        const updated = await client.networks.disconnect(name, vm);
        process.stdout.write(`${updated.name}\n`);
      }),
    );
}

export function networkTable(list: NetworkView[]): string {
  return table(
    ['NAME', 'SUBNET', 'KIND', 'VMS', 'CREATED'],
    list.map((n) => [n.name, n.subnet, n.builtin ? 'built in' : n.internal ? 'internal' : 'named', n.vms.map((v) => `${v.name} ${v.address}`).join(', ') || '-', n.createdAt ? ago(n.createdAt) : '-']),
  );
}
