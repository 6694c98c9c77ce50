import type { Command } from 'commander';
import { forEachRef, withClient } from '../action.js';
import { ago, bytes, table } from '../format.js';
import { pullProgress } from '../pull-progress.js';
import { resolve } from 'node:path';
import { collect, oneOf, wholeNumber } from '../errors.js';

const INSECURE_FLAG = '--insecure-registry <host[:port]>';
const INSECURE_HELP = 'allow plain http to this registry (repeatable)';
const INSECURE_NOTE = 'Plain http:// is used only for loopback registries, those given with --insecure-registry, and those in celld\'s CELL_INSECURE_REGISTRIES.';
import { examples } from '../help.js';

export function register(program: Command): void {
  program
    .command('pull')
    .description('download an image from an OCI registry (Docker Hub, ghcr.io, a local registry, ...)')
    .summary('download an image from a registry')
    .argument('<image>', 'reference, e.g. alpine:3.20 or 127.0.0.1:5000/team/app@sha256:...')
    .option('--platform <os/arch>', 'platform to select from a multi-platform image', 'linux/amd64')
    .option('-q, --quiet', 'print only the digest')
    .option(INSECURE_FLAG, INSECURE_HELP, collect)
    .addHelpText(
      'after',
      `\n${INSECURE_NOTE}\n${examples('cell pull alpine:3.20', 'cell pull --platform linux/arm64 127.0.0.1:5000/app:dev', 'cell pull --insecure-registry registry.lan:5000 registry.lan:5000/team/app:v1')}`,
    )
    .action(
      withClient(async (client, reference: string, flags: { platform: string; quiet?: boolean; insecureRegistry?: string[] }) => {
        const progress = await pullProgress(flags.quiet ?? false);
        try {
          const image = await client.images.pull(reference, { platform: flags.platform, insecureRegistries: flags.insecureRegistry, onProgress: progress.onProgress });
          progress.stop();
          process.stdout.write(flags.quiet ? `${image.digest}\n` : `${image.reference} ${image.digest}\n`);
        } finally {
          progress.stop();
        }
      }),
    );

  program
    .command('images')
    .description('list local images')
    .option('--digests', 'show digests')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell images', 'cell images --digests', 'cell images --format json'))
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
    .summary('remove images')
    .argument('<image...>', 'references')
    .option('-f, --force', 'remove the reference even while VMs or snapshots use the image')
    .addHelpText('after', examples('cell rmi alpine:3.20', 'cell rmi -f alpine:3.20'))
    .action(
      withClient(async (client, refs: string[], flags: { force?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          await client.images.remove(ref, { force: flags.force });
          process.stdout.write(`${ref}\n`);
        });
      }),
    );

  program
    .command('push')
    .description('upload a local image to a registry')
    .argument('<image>', 'local image reference')
    .argument('[target]', 'where to push, e.g. 127.0.0.1:5000/team/app:v1 (default: the same reference)')
    .option(INSECURE_FLAG, INSECURE_HELP, collect)
    .addHelpText('after', `\nCredentials come from cell login or ~/.docker/config.json. ${INSECURE_NOTE}\n${examples('cell push alpine:3.20 127.0.0.1:5000/mirror/alpine:3.20')}`)
    .action(
      withClient(async (client, reference: string, target: string | undefined, flags: { insecureRegistry?: string[] }) => {
        const pushed = await client.images.push(reference, target, { insecureRegistries: flags.insecureRegistry });
        process.stdout.write(`${pushed.reference} ${pushed.digest}\n`);
      }),
    );

  program
    .command('login')
    .description('check and store credentials for a registry (basic or token auth)')
    .summary('store credentials for a registry')
    .argument('<registry>', 'registry host, e.g. ghcr.io or 127.0.0.1:5000')
    .requiredOption('-u, --username <user>', 'user name')
    .option('-p, --password <password>', 'password (prefer --password-stdin)')
    .option('--password-stdin', 'read the password from stdin')
    .option(INSECURE_FLAG, INSECURE_HELP, collect)
    .addHelpText('after', examples('echo "$TOKEN" | cell login -u me --password-stdin ghcr.io', 'cell login -u admin -p secret 127.0.0.1:5000'))
    .action(
      withClient(async (client, registry: string, flags: { username: string; password?: string; passwordStdin?: boolean; insecureRegistry?: string[] }) => {
        let password = flags.password ?? '';
        if (flags.passwordStdin) {
          const chunks: Buffer[] = [];
          for await (const c of process.stdin) chunks.push(c as Buffer);
          password = Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
        }
        await client.registries.login(registry, flags.username, password, { insecureRegistries: flags.insecureRegistry });
        process.stdout.write(`logged in to ${registry}\n`);
      }),
    );

  program
    .command('logout')
    .description('forget stored credentials for a registry')
    .argument('<registry>', 'registry host')
    .addHelpText('after', examples('cell logout ghcr.io'))
    .action(
      withClient(async (client, registry: string) => {
        const { removed } = await client.registries.logout(registry);
        process.stdout.write(removed ? `logged out of ${registry}\n` : `no stored credentials for ${registry}\n`);
      }),
    );

  const image = program.command('image').description('image archives and clean-up: import, export, prune').summary('image import|export|prune');
  image
    .command('export')
    .description('write a local image as an OCI-layout tar archive')
    .argument('<image>', 'local image reference')
    .argument('<file>', 'archive to write')
    .addHelpText('after', examples('cell image export alpine:3.20 /tmp/alpine.tar', 'cell image import /tmp/alpine.tar'))
    .action(
      withClient(async (client, reference: string, file: string) => {
        const out = await client.images.export(reference, resolve(file));
        process.stdout.write(`${resolve(file)} ${out.digest} (${bytes(out.bytes)})\n`);
      }),
    );
  image
    .command('prune')
    .description('remove blobs and disks nothing uses; with --max-bytes, evict least recently used images too')
    .option('--max-bytes <bytes>', 'keep image disks under this many bytes', wholeNumber('--max-bytes', 'bytes'))
    .addHelpText('after', examples('cell image prune', 'cell image prune --max-bytes 5000000000'))
    .action(
      withClient(async (client, flags: { maxBytes?: number }) => {
        const out = await client.images.prune({ maxBytes: flags.maxBytes });
        for (const ref of out.evicted) process.stdout.write(`evicted ${ref}\n`);
        process.stdout.write(`freed ${bytes(out.bytesFreed)}\n`);
      }),
    );
  image
    .command('import')
    .description('import a docker-save or OCI-layout tar archive (air-gapped hosts)')
    .argument('<file>', 'archive path')
    .option('--name <reference>', 'reference to record it under')
    .addHelpText('after', examples('docker save alpine:3.20 -o alpine.tar && cell image import alpine.tar', 'cell image import --name mine:1 oci-layout.tar'))
    .action(
      withClient(async (client, file: string, flags: { name?: string }) => {
        const imported = await client.images.import(resolve(file), { reference: flags.name });
        process.stdout.write(`${imported.reference} ${imported.digest}\n`);
      }),
    );
}
