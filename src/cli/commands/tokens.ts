import type { Command } from 'commander';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { TokenView } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { durationMs, oneOf } from '../errors.js';
import { ago, table } from '../format.js';
import { examples } from '../help.js';

export function register(program: Command): void {
  registerUi(program);
  const token = program
    .command('token')
    .description("bearer tokens for celld's TCP listener (celld --listen HOST:PORT; docs/remote.md)")
    .summary('create, list and revoke API tokens for remote use');

  token
    .command('create')
    .description('make a token and print it, once (celld keeps only its hash): give it to the remote caller as CELL_TOKEN')
    .requiredOption('--name <name>', 'what it is for: 1-63 letters, digits, _ . -')
    .option('--scope <scope>', 'read (look only), write (everything but tokens) or admin (tokens too)', oneOf('--scope', ['read', 'write', 'admin']), 'write')
    .option('--expires <duration>', 'how long it is valid, e.g. 30d, 12h (default: until revoked)', durationMs('--expires'))
    .addHelpText(
      'after',
      examples(
        'cell token create --name ci --expires 30d',
        'cell token create --name dashboard --scope read',
        'CELL_HOST=https://build-host:7070 CELL_TOKEN=cell_... CELL_TLS_FINGERPRINT=AB:CD:... cell ps   # on another machine',
      ),
    )
    .action(
      withClient(async (client, flags: { name: string; scope: 'read' | 'write' | 'admin'; expires?: number }) => {
        const made = await client.tokens.create(flags.name, { scope: flags.scope, ...(flags.expires ? { expiresInMs: flags.expires } : {}) });
        process.stdout.write(`${made.secret}\n`);
        process.stderr.write(`token "${made.token.name}" (${made.token.scope}${made.token.expiresAt ? `, expires ${made.token.expiresAt}` : ', no expiry'}): shown this once\n`);
      }),
    );

  token
    .command('ls')
    .description('list tokens (never their secrets)')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell token ls'))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const list = await client.tokens.list();
        if (flags.format === 'json') return void process.stdout.write(JSON.stringify(list, null, 2) + '\n');
        process.stdout.write(tokenTable(list));
      }),
    );

  token
    .command('rm')
    .description('revoke tokens, by name or id: a request with one fails from then on')
    .argument('<name...>', 'token names or ids')
    .addHelpText('after', examples('cell token rm ci'))
    .action(
      withClient(async (client, names: string[]) => {
        await forEachRef(names, async (name) => {
          await client.tokens.remove(name);
          process.stdout.write(`${name}\n`);
        });
      }),
    );
}

/** The dashboard's link lasts this long unless --expires says otherwise. */
const UI_TOKEN_MS = 12 * 3600 * 1000;

function registerUi(program: Command): void {
  program
    .command('ui')
    .description(
      "print a link to the web dashboard on celld's TCP listener, with a new write token in its #fragment (browsers do not send the fragment; the page keeps the token for its tab only)",
    )
    .summary('open the web dashboard: VMs, logs, terminals, the snapshot tree')
    .option('--expires <duration>', "how long the link's token is valid, e.g. 1h, 7d (default: 12h)", durationMs('--expires'))
    .option('--scope <scope>', 'read (look only) or write (stop, fork, terminals...)', oneOf('--scope', ['read', 'write']), 'write')
    .addHelpText(
      'after',
      examples(
        'celld --listen 127.0.0.1:7070 &   # or CELL_LISTEN=127.0.0.1:7070 for the celld cell starts',
        'cell ui',
        'ssh -L 7070:127.0.0.1:7070 build-host   # then open the link on your machine',
      ),
    )
    .action(
      withClient(async (client, flags: { expires?: number; scope: 'read' | 'write' }) => {
        const info = await client.info();
        if (!info.remote) {
          throw new CellError(
            ErrorCodes.INVALID_STATE,
            'celld serves no TCP listener, and the dashboard is on it: start celld with --listen 127.0.0.1:7070 (or set CELL_LISTEN before it starts; docs/remote.md)',
          );
        }
        // Dated for `cell token ls`, with a random tail so two links made in one second do not clash.
        const name = `ui-${new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-')}-${Math.random().toString(16).slice(2, 6)}`;
        const made = await client.tokens.create(name, { scope: flags.scope, expiresInMs: flags.expires ?? UI_TOKEN_MS });
        const base = info.remote.url.replace(/\/+$/, '');
        process.stdout.write(`${base}/ui/#token=${made.secret}\n`);
        const note = info.remote.fingerprint
          ? `; the certificate is celld's own (self-signed): check its SHA-256 fingerprint when the browser asks: ${info.remote.fingerprint}`
          : '';
        process.stderr.write(`token "${name}" (${flags.scope}, expires ${made.token.expiresAt}; revoke with cell token rm ${name})${note}\n`);
      }),
    );
}

function tokenTable(list: TokenView[]): string {
  const now = Date.now();
  return table(
    ['ID', 'NAME', 'SCOPE', 'CREATED', 'EXPIRES', 'LAST USED'],
    list.map((t) => [
      t.id,
      t.name,
      t.scope,
      ago(t.createdAt),
      t.expiresAt ? (Date.parse(t.expiresAt) <= now ? 'expired' : t.expiresAt) : 'never',
      t.lastUsedAt ? ago(t.lastUsedAt) : 'never',
    ]),
  );
}
