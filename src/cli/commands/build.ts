import type { Command } from 'commander';
import { resolve } from 'node:path';
import type { BuildProgressEvent } from '../../sdk/index.js';
import { withClient } from '../action.js';
import { passThrough, streamed } from '../context.js';
import { age, byteSize, milliseconds, oneOf, wholeNumber } from '../errors.js';
import { ago, bytes, elapsed, short, table } from '../format.js';
import { examples } from '../help.js';

interface BuildFlags {
  file: string;
  tag?: string;
  cache: boolean;
  target?: string;
  quiet?: boolean;
}

export function register(program: Command): void {
  program
    .command('build')
    .description('run a build file step by step, each step cached as a snapshot, and name the result')
    .summary('build a snapshot from a build file (cached per step)')
    .option('-f, --file <file>', 'the build file (TOML, see docs/build-files.md)', 'build.toml')
    .option('-t, --tag <name>', 'name the final snapshot (the name moves from an older build)')
    .option('--no-cache', 'run every step again (the results replace the cached ones)')
    .option('--target <step>', 'build up to the step with this name (default: the last step)')
    .option('-q, --quiet', "print only the final snapshot's id")
    .addHelpText(
      'after',
      `
Each step forks a VM from the previous step's snapshot, does its work and is snapshotted; the
snapshot is cached under a key of everything that could change it (the previous snapshot, the
command, env, working directory, the content of copied files, this host's QEMU and kernel). An
unchanged step is a cache hit: nothing runs. A change in step k re-runs k and the steps after it.
A failing step stops the build; cell exits with the step's exit code.

Build file (paths are relative to the file's folder):
  base = "busybox"                      # or: from = "SNAPSHOT"
  [[step]]
  copy = "site"                         # a host file or folder
  to = "/www"
  [[step]]
  env = { PORT = "8080" }
  [[step]]
  run = "httpd -f -p $PORT -h /www"     # a string runs under /bin/sh -c; or an array (argv)
  detach = true                         # leave it running in the snapshot
  ready = "wget -q -O /dev/null http://127.0.0.1:8080/"   # retried until it succeeds

Examples:
  cell build -t web
  cell build -f ci/build.toml -t ci-base --no-cache
  cell run --rm --from web -- wget -q -O- http://127.0.0.1:8080/`,
    )
    .action(async (flags: BuildFlags, cmd: Command) => {
      process.exitCode = await build(flags, cmd);
    });

  const cache = program.command('cache').description('the action cache: snapshots stored under the key of the step that made them');
  cache
    .command('ls')
    .description('list cache entries, least recently used first')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText('after', examples('cell cache ls', 'cell cache ls --format json'))
    .action(
      withClient(async (client, flags: { format: string }) => {
        const entries = await client.cache.list();
        if (flags.format === 'json') return void process.stdout.write(JSON.stringify(entries, null, 2) + '\n');
        process.stdout.write(
          table(
            ['KEY', 'SNAPSHOT', 'SIZE', 'HITS', 'LAST USED', 'WHAT'],
            entries.map((e) => [short(e.key), e.snapshotName ?? short(e.snapshotId), bytes(e.bytes), String(e.hits), ago(e.lastUsed), e.description]),
          ),
        );
      }),
    );
  cache
    .command('prune')
    .description('remove least recently used entries (and their snapshots) down to the limits')
    .option('--max-count <n>', 'keep at most this many entries', wholeNumber('--max-count'))
    .option('--max-bytes <size>', 'keep at most this much snapshot data (e.g. 5G)', byteSize('--max-bytes'))
    .option('--older-than <age>', 'remove entries last used longer ago than this (e.g. 7d, 12h)', age('--older-than'))
    .addHelpText(
      'after',
      `
An entry whose snapshot something still needs (a VM running on it, a later step's snapshot on
top of it) stays until that goes; later steps go before the steps they grew from.
${examples('cell cache prune --max-count 0', 'cell cache prune --older-than 7d', 'cell cache prune --max-bytes 20G')}`,
    )
    .action(
      withClient(async (client, flags: { maxCount?: number; maxBytes?: number; olderThan?: number }) => {
        const { removed } = await client.cache.prune({ maxCount: flags.maxCount, maxBytes: flags.maxBytes, maxAgeMs: milliseconds(flags.olderThan) });
        process.stdout.write(removed.map((e) => `${short(e.key)} ${e.description}\n`).join(''));
      }),
    );
}

function build(flags: BuildFlags, cmd: Command): Promise<number> {
  const say = (line: string) => {
    if (!flags.quiet) process.stderr.write(line + '\n');
  };
  return streamed(cmd, async (client, signal) => {
    const result = await client.builds.build(
      { file: resolve(flags.file), tag: flags.tag, noCache: !flags.cache, target: flags.target },
      {
        ...(flags.quiet ? {} : passThrough),
        signal,
        onEvent: (e) => {
          const line = describe(e);
          if (line) say(line);
        },
      },
    );
    if (result.exitCode !== 0) return result.exitCode;
    const s = result.snapshot!;
    say(`built ${s.name} (${short(s.id)}) in ${elapsed(result.durationMs)}: ${result.ran} step${result.ran === 1 ? '' : 's'} ran, ${result.cached} from cache`);
    if (flags.quiet) process.stdout.write(`${s.id}\n`);
    return 0;
  });
}

/** The line a build event prints (stderr), Docker-build style. */
export function describe(e: BuildProgressEvent): string | null {
  switch (e.type) {
    case 'base':
      return `FROM ${e.description}`;
    case 'step':
      return `[${e.number}/${e.total}] ${e.description}`;
    case 'step-done':
      if (e.outcome === 'cached') return `[${e.number}/${e.total}] CACHED -> ${short(e.snapshot ?? '')}`;
      if (e.outcome === 'metadata') return null;
      return `[${e.number}/${e.total}] done in ${elapsed(e.durationMs)} -> ${short(e.snapshot ?? '')}`;
    case 'step-failed':
      return `[${e.number}] FAILED: ${e.message}`;
  }
}
