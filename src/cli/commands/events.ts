import type { Command } from 'commander';
import type { CellEvent } from '../../sdk/index.js';
import { withClient } from '../action.js';
import { interruptible } from '../context.js';
import { collect, oneOf, pointInTime } from '../errors.js';
import { examples } from '../help.js';

export function register(program: Command): void {
  program
    .command('events')
    .description(
      'print what happens to VMs and snapshots as it happens, like docker events: vm create, start, pause, unpause, stop, die (exit code, reason), snapshot, health_status, update, oom (the guest OOM killer ended a process), destroy; snapshot create, fork, delete',
    )
    .summary('stream VM and snapshot events')
    .option('--since <time>', 'first the kept events from TIME on: 2026-12-03T10:00:00Z, Unix seconds, or a duration ago (10m)', pointInTime('--since'))
    .option('--until <time>', 'stop at TIME (with a --since in the past: print what happened between, then exit)', pointInTime('--until'))
    .option('-f, --filter <key=value>', 'vm=NAME, snapshot=NAME, type=vm|snapshot, event=ACTION, label=K[=V] (repeatable; one key given twice means either)', collect)
    .option('--format <format>', 'text or json (one object per line)', oneOf('--format', ['text', 'json']), 'text')
    .addHelpText(
      'after',
      examples('cell events', 'cell events --filter vm=web --filter event=die', 'cell events --since 1h --until 0s --format json', 'cell events --filter label=team=ml'),
    )
    .action(
      withClient(async (client, flags: { since?: Date; until?: Date; filter?: string[]; format: string }) => {
        const interrupt = interruptible();
        try {
          for await (const event of client.events.stream({ since: flags.since, until: flags.until, filters: flags.filter, signal: interrupt.signal })) {
            process.stdout.write(flags.format === 'json' ? JSON.stringify(event) + '\n' : eventLine(event));
          }
        } catch (err) {
          if (interrupt.code() === null) throw err;
        } finally {
          interrupt.dispose();
        }
        process.exitCode = interrupt.code() ?? process.exitCode;
      }),
    );
}

/** `TIME TYPE ACTION ID (name=NAME, key=value...)`, as docker events prints. */
function eventLine(event: CellEvent): string {
  const attributes = [`name=${event.actor.name}`, ...Object.entries(event.attributes).map(([k, v]) => `${k}=${v}`)];
  return `${event.time} ${event.type} ${event.action} ${event.actor.id} (${attributes.join(', ')})\n`;
}
