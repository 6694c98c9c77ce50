import type { Command } from 'commander';
import type { CellClient, Vm } from '../../sdk/index.js';
import { forEachRef, withClient } from '../action.js';
import { collect, durationMs, labelFilters, milliseconds, oneOf, pointInTime, seconds, UsageError, wholeNumber } from '../errors.js';
import { formatPort } from '../../domain/network.js';
import { IDLE_ACTIONS, type IdleAction } from '../../domain/timeouts.js';
import { interruptible } from '../context.js';
import { ago, short, table, vmState } from '../format.js';
import { examples } from '../help.js';

export function register(program: Command): void {
  program
    .command('ps')
    .description('list VMs (running ones; -a for all)')
    .option('-a, --all', 'include created and stopped VMs')
    .option('-q, --quiet', 'print full VM ids only')
    .option('--format <format>', 'table or json', oneOf('--format', ['table', 'json']), 'table')
    .option('-f, --filter <label=KEY[=VALUE]>', 'only VMs with this label (repeatable: all must hold)', collect)
    .addHelpText(
      'after',
      `
STATE says how long a VM has been running, or how and when it stopped ("stopped (exit 0) 2m ago").

Examples:
  cell ps
  cell ps -a --format json
  cell ps -a --filter label=team=ml
  cell rm -f $(cell ps -aq --filter label=ci)`,
    )
    .action(
      withClient(async (client, flags: { all?: boolean; quiet?: boolean; format: string; filter?: string[] }) => {
        const vms = await client.vms.list({ all: flags.all, labels: labelFilters(flags.filter) });
        if (flags.format === 'json') process.stdout.write(JSON.stringify(vms, null, 2) + '\n');
        else if (flags.quiet) process.stdout.write(vms.map((v) => `${v.id}\n`).join(''));
        else process.stdout.write(vmTable(vms));
      }),
    );

  program
    .command('inspect')
    .description('show VMs as JSON (like docker inspect)')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .addHelpText('after', examples('cell inspect box', "cell inspect box | jq '.[0].spec'", 'cell inspect $(cell ps -q)'))
    .action(
      withClient(async (client, refs: string[]) => {
        const found: Vm[] = [];
        await forEachRef(refs, async (ref) => void found.push(await client.vms.get(ref)));
        process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      }),
    );

  program
    .command('port')
    .description("show a VM's published ports (like docker port)")
    .argument('<vm>', 'VM name, id, or id prefix')
    .argument('[port]', 'only this guest port, as 80 or 53/udp')
    .addHelpText('after', examples('cell run -d -p 80 --name web busybox -- httpd -f -p 80', 'cell port web', 'curl http://$(cell port web 80)/'))
    .action(
      withClient(async (client, ref: string, only: string | undefined) => {
        const vm = await client.vms.get(ref);
        const [guestPort, protocol = 'tcp'] = (only ?? '').split('/');
        const ports = (vm.network?.ports ?? []).filter((p) => !only || (String(p.guestPort) === guestPort && p.protocol === protocol));
        if (only && ports.length === 0) throw new UsageError(`VM ${vm.name} does not publish ${only}${vm.state === 'running' ? '' : ` (it is ${vm.state})`}`);
        for (const p of ports) process.stdout.write(only ? `${p.hostIp}:${p.hostPort}\n` : `${p.guestPort}/${p.protocol} -> ${p.hostIp}:${p.hostPort}\n`);
      }),
    );

  program
    .command('logs')
    .description("print what a VM's main command wrote (stdout to stdout, stderr to stderr)")
    .summary("print a VM's main command output")
    .argument('<vm>', 'VM name, id, or id prefix')
    .option('-f, --follow', 'keep printing new output until the VM stops')
    .option('-n, --tail <lines>', 'only the last LINES lines ("all" for everything)', tailLines)
    .option('--since <time>', 'only output from TIME on: 2026-12-03T10:00:00Z, Unix seconds, or a duration ago (10m, 1h)', pointInTime('--since'))
    .option('--until <time>', 'only output before TIME (same forms as --since)', pointInTime('--until'))
    .option('-t, --timestamps', 'start each line with the time it was written (RFC 3339, UTC)')
    .addHelpText(
      'after',
      examples(
        'cell run -d --name job busybox -- sh -c "for i in 1 2 3; do echo $i; sleep 1; done"',
        'cell logs -f job',
        'cell logs --tail 20 --timestamps job',
        'cell logs --since 10m job 2>/dev/null',
      ),
    )
    .action(
      withClient(async (client, ref: string, flags: { follow?: boolean; tail?: number | 'all'; since?: Date; until?: Date; timestamps?: boolean }) => {
        const interrupt = interruptible();
        // Per stream: whether the next byte starts a line (where a timestamp goes).
        const atLineStart = { stdout: true, stderr: true };
        try {
          const entries = client.vms.logs(ref, { follow: flags.follow, tail: flags.tail === 'all' ? undefined : flags.tail, since: flags.since, until: flags.until, signal: interrupt.signal });
          for await (const entry of entries) {
            let text = entry.text;
            if (flags.timestamps) {
              text = text.replace(/[^\n]*\n|[^\n]+$/g, (line) => {
                const stamped = atLineStart[entry.stream] ? `${entry.time} ${line}` : line;
                atLineStart[entry.stream] = line.endsWith('\n');
                return stamped;
              });
            }
            (entry.stream === 'stderr' ? process.stderr : process.stdout).write(text);
          }
        } catch (err) {
          if (interrupt.code() === null) throw err;
        } finally {
          interrupt.dispose();
        }
        process.exitCode = interrupt.code() ?? process.exitCode;
      }),
    );

  program
    .command('stop')
    .description('stop VMs: SIGTERM to guest processes, SIGKILL after the grace period, power off')
    .summary('stop VMs (their disks are kept)')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .option('-t, --time <sec>', 'seconds to wait after SIGTERM before SIGKILL', seconds('--time'), 10)
    .addHelpText('after', examples('cell stop box', 'cell stop -t 0 box other', 'cell stop $(cell ps -q)'))
    .action(
      withClient(async (client, refs: string[], flags: { time: number }) => {
        await forEachRef(refs, async (ref) => {
          const vm = await client.vms.stop(ref, { graceMs: milliseconds(flags.time) });
          process.stdout.write(`${vm.name}\n`);
        });
      }),
    );

  program
    .command('wait')
    .description("wait until VMs' main commands exit (or the VMs stop) and print each exit code, as docker wait; with --healthy, until their health checks pass, printing their names")
    .summary('wait until VMs stop, or are healthy')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .option('--healthy', 'wait until the health check (run --health-cmd) passes instead; a VM that stops first is an error')
    .option('--timeout <duration>', 'give up after this long, all VMs together, e.g. 30s: an error (naming the last health check), exit 1', durationMs('--timeout'))
    .addHelpText(
      'after',
      `
Without --healthy it prints the exit code of each VM's main command once it has exited (a VM run
with -d keeps running after it) or the VM stopped; "-" when there is none (stopped or killed
before it ended, or no main command). Exit status 1 if any VM failed the wait.

Examples:
  cell run -d --name job busybox -- sh -c 'sleep 5; exit 3'
  cell wait job                                    # 5 s later: prints 3
  cell run -d --name web --health-cmd 'wget -q -O /dev/null http://127.0.0.1/' nginx
  cell wait --healthy --timeout 60s web && curl http://127.0.0.1:8080/`,
    )
    .action(
      withClient(async (client, refs: string[], flags: { healthy?: boolean; timeout?: number }) => {
        // One time limit for all: it starts with the first wait, which gets all of it (its message names it).
        let deadline: number | undefined;
        await forEachRef(refs, async (ref) => {
          const now = Date.now();
          if (flags.timeout !== undefined) deadline ??= now + flags.timeout;
          const timeoutMs = deadline === undefined ? undefined : Math.max(0, deadline - now);
          const vm = await client.vms.wait(ref, { until: flags.healthy ? 'healthy' : 'stopped', ...(timeoutMs !== undefined ? { timeoutMs } : {}) });
          process.stdout.write(`${flags.healthy ? vm.name : (vm.exit?.exitCode ?? '-')}\n`);
        });
      }),
    );

  program
    .command('update')
    .description("change VMs' time limits, running or stopped: a new --ttl runs from now (0 turns a limit off)")
    .summary("change VMs' time limits (--ttl, --idle-timeout)")
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .option('--ttl <duration>', 'stop it this long from now (with run --rm: remove it), e.g. 30m; 0: no TTL', durationMs('--ttl'))
    .option('--idle-timeout <duration>', 'after this long without exec, cp or published-port traffic: its idle action; 0: none', durationMs('--idle-timeout'))
    .option('--idle-action <action>', 'what its idle timeout does: stop, pause (no CPU; RAM kept) or pause-to-disk (RAM freed)', oneOf('--idle-action', IDLE_ACTIONS))
    .addHelpText(
      'after',
      `
The limits are kept with the VM and enforced by celld once a second, across restarts (a TTL
that ran out while celld was down is enforced when it is back; idle time counts from its
start). cell inspect shows them (spec.timeouts) and when the TTL ends (expiresAt).

Examples:
  cell update --ttl 2h box                 # box stops two hours from now
  cell update --ttl 0 box                  # no TTL any more
  cell update --idle-timeout 15m --idle-action pause-to-disk $(cell ps -q)`,
    )
    .action(
      withClient(async (client, refs: string[], flags: { ttl?: number; idleTimeout?: number; idleAction?: IdleAction }) => {
        const limits = {
          ...(flags.ttl !== undefined ? { ttlMs: flags.ttl } : {}),
          ...(flags.idleTimeout !== undefined ? { idleTimeoutMs: flags.idleTimeout } : {}),
          ...(flags.idleAction !== undefined ? { idleAction: flags.idleAction } : {}),
        };
        if (Object.keys(limits).length === 0) throw new UsageError('nothing to change: give --ttl, --idle-timeout or --idle-action');
        await forEachRef(refs, async (ref) => {
          process.stdout.write(`${(await client.vms.update(ref, limits)).name}\n`);
        });
      }),
    );

  program
    .command('start')
    .description('boot stopped VMs again, with their disks as they were left (the main command is not re-run)')
    .summary('boot stopped VMs again')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .addHelpText('after', examples('cell start box', 'cell exec box -- cat /root/notes'))
    .action(eachVm((client, ref) => client.vms.start(ref)));

  program
    .command('pause')
    .description("stop running VMs' vCPUs: they use no CPU and their clocks stand still; QEMU and their RAM stay on the host. exec, cp and snapshot are refused until unpause; stop and rm -f work")
    .summary('pause running VMs (--to-disk: free their RAM)')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .option('--to-disk', "save their memory to disk and end their QEMU (state suspended), freeing the host's RAM; unpause restores them, processes and files, under the same id")
    .addHelpText(
      'after',
      `
With --to-disk a VM is snapshotted privately (no snapshot list shows it) and waits as
"suspended"; unpause restores it (a boot from its memory: its processes go on where they were,
its clocks jump). stop lets its saved memory go (a start then boots its disk); rm -f removes it.

Examples:
  cell pause box && cell unpause box
  cell pause --to-disk box        # frees box's RAM until:
  cell unpause box`,
    )
    .action(
      withClient(async (client, refs: string[], flags: { toDisk?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          process.stdout.write(`${(await client.vms.pause(ref, { toDisk: flags.toDisk })).name}\n`);
        });
      }),
    );

  program
    .command('unpause')
    .description('let paused VMs run on where they stopped (a VM paused --to-disk is restored from its memory first)')
    .summary('unpause paused VMs')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .addHelpText('after', examples('cell unpause box', 'cell unpause $(cell ps -q)'))
    .action(eachVm((client, ref) => client.vms.unpause(ref)));

  program
    .command('rm')
    .description('remove VMs and their disks')
    .argument('<vm...>', 'VM names, ids, or id prefixes')
    .option('-f, --force', 'remove running VMs too (killed without grace)')
    .addHelpText('after', examples('cell rm box', 'cell rm -f box', 'cell rm -f $(cell ps -aq)'))
    .action(
      withClient(async (client, refs: string[], flags: { force?: boolean }) => {
        await forEachRef(refs, async (ref) => {
          const vm = await client.vms.get(ref);
          await client.vms.remove(vm.id, { force: flags.force });
          process.stdout.write(`${vm.name}\n`);
        });
      }),
    );
}

export function vmTable(vms: Vm[]): string {
  return table(
    ['VM ID', 'NAME', 'IMAGE', 'STATE', 'CPUS', 'MEMORY', 'CREATED', 'PORTS'],
    vms.map((v) => [short(v.id), v.name, v.spec.image, vmState(v), String(v.spec.cpus), `${v.spec.memoryMib} MiB`, ago(v.createdAt), (v.network?.ports ?? []).map(formatPort).join(', ')]),
  );
}

/** An action that calls `call` on each VM named and prints each one's name (start, pause, unpause). */
function eachVm(call: (client: CellClient, ref: string) => Promise<Vm>) {
  return withClient(async (client, refs: string[]) => {
    await forEachRef(refs, async (ref) => {
      process.stdout.write(`${(await call(client, ref)).name}\n`);
    });
  });
}

/** `--tail all` stays a word: commander would replace a parser's undefined with the raw text. */
function tailLines(value: string): number | 'all' {
  return value === 'all' ? 'all' : wholeNumber('--tail', 'lines')(value);
}
