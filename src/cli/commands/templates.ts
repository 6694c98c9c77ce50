import type { Command } from 'commander';
import { resolve } from 'node:path';
import type { TemplateView } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { passThrough, streamed } from '../context.js';
import { collect, oneOf } from '../errors.js';
import { ago, bytes, short, table } from '../format.js';
import { examples } from '../help.js';
import { transferProgress } from '../transfer-progress.js';
import { describe } from './build.js';

export function register(program: Command): void {
  const template = program
    .command('template')
    .description('templates: a build plus variants (roles with their own CPUs, memory, data disk), ready to run warm')
    .summary('build, list, inspect, push, pull and remove templates');

  template
    .command('build')
    .description("build every variant of a template file into a revision and make it the variant's current one")
    .argument('<file>', 'the template file (TOML, see docs/templates.md)')
    .option('--snapshot', "also boot each variant, await its service's ready check and keep a snapshot (warm starts)")
    .option('-q, --quiet', 'print only one line per variant')
    .addHelpText(
      'after',
      `
Unchanged inputs (the build, the service, the variant) are not rebuilt: the variant keeps its
revision. Each variant's VM is named after it: <template_id>-<role> unless the file names it.

Template file:
  template_id = "web"
  [build]
  base = "busybox"
  [[build.step]]
  copy = "site"
  to = "/www"
  [service]                                    # optional: runs in every VM of the template
  start = "httpd -f -p 8080 -h /www"
  ready = "wget -q -O /dev/null http://127.0.0.1:8080/"
  ports = [8080]                               # optional: each VM publishes them on free ports
  [[variants]]
  role = "server"
  vcpus = 1
  mem_mib = 256
  data_disk_mib = 64                           # optional: an empty ext4 disk at /data
${examples('cell template build --snapshot web.toml', 'cell run --rm --template web-server -- wget -q -O- http://127.0.0.1:8080/', 'cell run --rm --template web:server -- cat /www/index.html')}`,
    )
    .action(async (file: string, flags: { snapshot?: boolean; quiet?: boolean }, cmd: Command) => {
      process.exitCode = await build(resolve(file), flags, cmd);
    });

  template
    .command('ls')
    .description('list template variants with their current revision')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell template ls', 'cell template ls --format json'))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const list = await client.templates.list();
        if (flags.format === 'json') return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        process.stdout.write(templateTable(list));
      }),
    );

  template
    .command('inspect')
    .description('show variants and all their kept revisions as JSON')
    .argument('<template...>', 'variant names, TEMPLATE_ID:ROLE, or template ids with one variant')
    .addHelpText('after', examples('cell template inspect web-server', "cell template inspect web:server | jq '.[0].revision.warmSnapshot'"))
    .action(
      withClient(async (client, refs: string[]) => {
        const found: TemplateView[] = [];
        await forEachRef(refs, async (ref) => void found.push(await client.templates.get(ref)));
        process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      }),
    );

  template
    .command('push')
    .description("send a variant's current revision to an OCI registry: its built disk and warm snapshot as snapshot artifacts (only the blobs the registry lacks), then an index over them")
    .argument('<template>', 'variant name, TEMPLATE_ID:ROLE, or a template id with one variant')
    .argument('<reference>', 'where to: host[:port]/repository:tag')
    .option('--insecure-registry <host[:port]>', 'allow plain http to this registry (repeatable)', collect)
    .addHelpText(
      'after',
      `
The warm snapshot goes after the built disk it was booted from, so its RAM is sent as the chunks
that differ. Pools are not pushed: each host sets its own. Credentials are cell login's; the
artifact's format: docs/snapshot-artifacts.md ("Templates").
${examples('cell template push web-server 127.0.0.1:5000/team/web:v1', 'cell template pull 127.0.0.1:5000/team/web:v1')}`,
    )
    .action(
      withClient(async (client, ref: string, reference: string, flags: { insecureRegistry?: string[] }) => {
        const progress = await transferProgress(`push ${ref}`);
        const r = await client.templates.push(ref, reference, { insecureRegistries: flags.insecureRegistry, onProgress: progress.onProgress }).finally(progress.stop);
        process.stdout.write(
          `${r.reference}@${r.digest}: sent ${r.uploaded.blobs} blobs (${bytes(r.uploaded.bytes)}), ${r.existing.blobs} the registry had (${bytes(r.existing.bytes)})\n`,
        );
      }),
    );

  template
    .command('pull')
    .description("fetch a template pushed with \"template push\" and make its revision the variant's current one; refused before any RAM is fetched if this host cannot restore its snapshots")
    .argument('<reference>', 'host[:port]/repository:tag or @sha256:...')
    .option('--insecure-registry <host[:port]>', 'allow plain http to this registry (repeatable)', collect)
    .addHelpText(
      'after',
      `
Each snapshot is pulled as "cell snapshot pull" does (kept if this host has it already). Pools
are not pulled: set them here (a template file's pool, or cell snapshot pool).
${examples('cell template pull 127.0.0.1:5000/team/web:v1', 'cell run --rm --template web-server -- wget -q -O- http://127.0.0.1:8080/')}`,
    )
    .action(
      withClient(async (client, reference: string, flags: { insecureRegistry?: string[] }) => {
        const progress = await transferProgress('pull');
        const t = await client.templates.pull(reference, { insecureRegistries: flags.insecureRegistry, onProgress: progress.onProgress }).finally(progress.stop);
        process.stdout.write(`${t.name}\trevision ${short(t.currentRevision ?? '')}\t${t.revision?.warmSnapshot ? 'warm' : 'cold'}\n`);
      }),
    );

  template
    .command('rm')
    .description("remove template variants (a template id removes all its variants) and their warm snapshots")
    .argument('<template...>', 'variant names, TEMPLATE_ID:ROLE, or template ids')
    .option('-f, --force', 'also remove VMs running on their warm snapshots')
    .addHelpText('after', examples('cell template rm web-server', 'cell template rm web'))
    .action(
      withClient(async (client, refs: string[], flags: { force?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          const { removed } = await client.templates.remove(ref, { force: flags.force });
          process.stdout.write(removed.map((n) => `${n}\n`).join(''));
        });
      }),
    );
}

export function templateTable(list: TemplateView[]): string {
  return table(
    ['NAME', 'TEMPLATE', 'ROLE', 'REVISION', 'WARM', 'CPUS', 'MEMORY', 'DATA DISK', 'BUILT'],
    list.map((t) => {
      const r = t.revision;
      return [
        t.name,
        t.templateId,
        t.role,
        r ? short(r.id) : '-',
        r?.warmSnapshot ? 'yes' : 'no',
        r ? String(r.variant.vcpus) : '-',
        r ? `${r.variant.memMib} MiB` : '-',
        r && r.variant.dataDiskMib > 0 ? `${r.variant.dataDiskMib} MiB` : '-',
        ago(r?.builtAt ?? null),
      ];
    }),
  );
}

function build(file: string, flags: { snapshot?: boolean; quiet?: boolean }, cmd: Command): Promise<number> {
  return streamed(cmd, async (client, signal) => {
    const result = await client.templates.build(
      { file, snapshot: flags.snapshot },
      {
        ...(flags.quiet ? {} : passThrough),
        signal,
        onEvent: (e) => {
          if (e.type === 'variant') {
            if (e.status === 'building') process.stderr.write(`variant ${e.name} (${e.role}): building a new revision${flags.snapshot ? ' with a snapshot' : ''}\n`);
            else process.stdout.write(`${e.name}\t${e.status}\trevision ${short(e.revision ?? '')}\t${e.warm ? 'warm' : 'cold'}\n`);
          } else if (!flags.quiet) {
            const line = describe(e);
            if (line) process.stderr.write(line + '\n');
          }
        },
      },
    );
    return result.exitCode;
  });
}
