import type { Command } from 'commander';
import { forEachRef, withClient } from '../action.js';
import { ago, bytes, table } from '../format.js';

export function registerImageCommands(program: Command): void {
  program
    .command('pull')
    .description('download an image from an OCI registry (Docker Hub, ghcr.io, a local registry, ...)')
    .argument('<image>', 'reference, e.g. alpine:3.20 or 127.0.0.1:5000/team/app@sha256:...')
    .option('--platform <os/arch>', 'platform to select from a multi-platform image', 'linux/amd64')
    .option('-q, --quiet', 'print only the digest')
    .addHelpText('after', '\nplain http:// is used only for loopback registries or those in CELL_INSECURE_REGISTRIES.\n\nExamples:\n  cell pull alpine:3.20\n  cell pull --platform linux/arm64 127.0.0.1:5000/app:dev')
    .action(
      withClient(async (client, reference: string, flags: { platform: string; quiet?: boolean }) => {
        const image = await client.images.pull(reference, {
          platform: flags.platform,
          onProgress: (e) => {
            if (flags.quiet) return;
            if (e.phase === 'blob' && e.status !== 'downloading') process.stderr.write(`${String(e.digest).slice(7, 19)}: ${e.status} (${bytes(Number(e.total))})\n`);
            if (e.phase === 'unpack') process.stderr.write(`unpacking layer ${e.layer}/${e.layers}\n`);
            if (e.phase === 'disk') process.stderr.write(`base disk: ${e.status}\n`);
          },
        });
        process.stdout.write(flags.quiet ? `${image.digest}\n` : `${image.reference} ${image.digest}\n`);
      }),
    );

  program
    .command('images')
    .description('list local images')
    .option('--digests', 'show digests')
    .option('--format <format>', 'table or json', 'table')
    .action(
      withClient(async (client, flags: { digests?: boolean; format: string }) => {
        const images = await client.images.list();
        if (flags.format === 'json') {
          process.stdout.write(JSON.stringify(images, null, 2) + '\n');
          return;
        }
        const headers = ['REFERENCE', ...(flags.digests ? ['DIGEST'] : []), 'SIZE', 'CREATED', 'LAST USED'];
        process.stdout.write(
          table(
            headers,
            images.map((i) => [i.reference + (i.builtin ? ' (built-in)' : ''), ...(flags.digests ? [i.digest] : []), bytes(i.sizeBytes), ago(i.createdAt), ago(i.lastUsed)]),
          ),
        );
      }),
    );

  program
    .command('rmi')
    .description('remove images (refused while a VM or snapshot uses one, unless -f)')
    .argument('<image...>', 'references')
    .option('-f, --force', 'remove the reference even while VMs or snapshots use the image')
    .action(
      withClient(async (client, refs: string[], flags: { force?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          await client.images.remove(ref, { force: flags.force });
          process.stdout.write(`${ref}\n`);
        });
      }),
    );

  const image = program.command('image').description('image archives: import and export');
  image
    .command('import')
    .description('import a docker-save or OCI-layout tar archive (air-gapped hosts)')
    .argument('<file>', 'archive path')
    .option('--name <reference>', 'reference to record it under')
    .action(
      withClient(async (client, file: string, flags: { name?: string }) => {
        const imported = await client.images.import(file, flags.name);
        process.stdout.write(`${imported.reference} ${imported.digest}\n`);
      }),
    );
}
