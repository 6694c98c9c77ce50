import type { Command } from 'commander';
import type { CellClient, VmStats } from '../../sdk/index.js';
import { withClient } from '../action.js';
import { interruptible } from '../context.js';
import { oneOf } from '../errors.js';
import { bytes, short, table } from '../format.js';

export function register(program: Command): void {
  program
    .command('stats')
    .description(
      "show VMs' resource use as the host sees it, like docker stats: their QEMU's CPU % over the last second (100% = one core), memory (RSS and PSS, and the RAM the guest was given), network and disk bytes since the VM started. On a terminal, a table redrawn every second until Ctrl-C; otherwise a line per VM every second; --no-stream prints one sample and exits",
    )
    .summary("show VMs' CPU, memory, network and disk use")
    .argument('[vm...]', 'VM names, ids, or id prefixes (default: every running VM)')
    .option('-a, --all', 'with no VM named: stopped VMs too (CPU 0%, the rest --)')
    .option('--no-stream', 'print one sample (taken over a second) and exit')
    .option('--format <format>', 'table, or json (one object per VM and sample, a line each)', oneOf('--format', ['table', 'json']), 'table')
    .addHelpText(
      'after',
      `
The numbers are QEMU's, read on the host: CPU from /proc/PID/stat, memory
from /proc/PID/smaps_rollup (PSS counts pages shared with other forks of one
snapshot 1/N), disk from QEMU's block statistics, network from the VM's tap
(NET is -- with --network none and with user-mode networking, which counts
nothing). A stopped VM shows 0% and --.

Examples:
  cell stats
  cell stats --no-stream web db
  cell stats --no-stream --format json web | jq .cpuPercent
  cell stats --format json > stats.ndjson      # a line per VM every second until Ctrl-C`,
    )
    .action(
      withClient(async (client, refs: string[], flags: { all?: boolean; stream: boolean; format: 'table' | 'json' }) => {
        const ids = refs.length > 0 ? await resolveAll(client, refs) : (await client.vms.list({ all: flags.all })).map((vm) => vm.id);
        if (!flags.stream) {
          const rows = await Promise.all(ids.map((id) => client.vms.stats(id)));
          process.stdout.write(flags.format === 'json' ? rows.map((r) => JSON.stringify(r) + '\n').join('') : statsTable(rows));
          return;
        }
        await streamStats(client, ids, flags.format);
      }),
    );
}

/** Every ref as a VM id, in order; the first that names no VM is the error. */
async function resolveAll(client: CellClient, refs: string[]): Promise<string[]> {
  const ids: string[] = [];
  for (const ref of refs) ids.push((await client.vms.get(ref)).id);
  return ids;
}

/**
 * A stream per VM until Ctrl-C (exit 0, as docker stats) or every VM is removed. On a terminal the
 * table is redrawn once a second's rows are in; elsewhere each row is printed as it comes.
 */
async function streamStats(client: CellClient, ids: string[], format: 'table' | 'json'): Promise<void> {
  const interrupt = interruptible();
  const live = format === 'table' && process.stdout.isTTY === true;
  const latest = new Map<string, VmStats>();
  let redraw: NodeJS.Timeout | undefined;
  const draw = () => {
    redraw = undefined;
    process.stdout.write(screen(ids.flatMap((id) => latest.get(id) ?? [])));
  };
  if (live) process.stdout.write(`\x1b[2J${screen([])}`);
  else if (format === 'table') process.stdout.write(statsHeader());
  const onRow = (row: VmStats) => {
    if (format === 'json') process.stdout.write(JSON.stringify(row) + '\n');
    else if (!live) process.stdout.write(statsLine(row));
    else {
      latest.set(row.id, row);
      // The streams' rows of one second arrive a few ms apart: one redraw for all of them.
      redraw ??= setTimeout(draw, 50);
    }
  };
  try {
    await Promise.all(
      ids.map(async (id) => {
        for await (const row of client.vms.statsStream(id, { signal: interrupt.signal })) onRow(row);
        latest.delete(id);
      }),
    );
  } catch (err) {
    if (interrupt.code() === null) throw err;
  } finally {
    clearTimeout(redraw);
    interrupt.dispose();
  }
}

const HEADERS = ['ID', 'NAME', 'CPU %', 'MEM RSS / GUEST', 'MEM PSS', 'NET RX / TX', 'BLOCK READ / WRITE'];

function cells(row: VmStats): string[] {
  const pair = (a: number, b: number) => `${bytes(a)} / ${bytes(b)}`;
  return [
    short(row.id),
    row.name,
    `${row.cpuPercent.toFixed(2)}%`,
    row.memory ? pair(row.memory.rssBytes, row.memory.guestBytes) : '--',
    row.memory ? bytes(row.memory.pssBytes) : '--',
    row.network ? pair(row.network.rxBytes, row.network.txBytes) : '--',
    row.disk ? pair(row.disk.readBytes, row.disk.writeBytes) : '--',
  ];
}

/** The stats table, docker stats' columns (`--` where a VM has no such figure). */
export function statsTable(rows: readonly VmStats[]): string {
  return table(HEADERS, rows.map(cells));
}

/** The table's header for line-by-line output (fixed widths, so later lines line up). */
export function statsHeader(): string {
  return statsLine(null);
}

/** One row in fixed-width columns; `null`: the header. */
export function statsLine(row: VmStats | null): string {
  const widths = [12, 16, 8, 22, 10, 22];
  const values = row ? cells(row) : HEADERS;
  return values.map((v, i) => (i < widths.length ? v.padEnd(widths[i]!) : v)).join('   ').trimEnd() + '\n';
}

/** The table drawn over the previous one from the top of the terminal, each line cleared to its end. */
export function screen(rows: readonly VmStats[]): string {
  const lines = statsTable(rows).trimEnd().split('\n');
  return `\x1b[H${lines.map((l) => `${l}\x1b[K`).join('\n')}\n\x1b[J`;
}
