import type { Command } from 'commander';
import type { CellClient, Vm, VmSpec } from '../../sdk/index.js';
import { absoluteMount } from '../../sdk/volumes.js';
import { parsePortSpec } from '../../domain/network.js';
import { IDLE_ACTIONS, type IdleAction } from '../../domain/timeouts.js';
import { byteSize, collect, durationMs, EXIT_FAILURE, oneOf, EXIT_RUN_FAILED, milliseconds, reportError, seconds, UsageError, wholeNumber } from '../errors.js';
import { commandExit, connect, interruptible, passThrough } from '../context.js';
import { checkTtyFlags, hostSize, rawTerminal, type HostTty } from '../terminal.js';

export interface RunFlags {
  name?: string;
  cpus?: number;
  memory?: number;
  env?: string[];
  workdir?: string;
  user?: string;
  timeout?: number;
  rm?: boolean;
  detach?: boolean;
  from?: string;
  template?: string;
  dataDisk?: number;
  diskIops?: number;
  diskBps?: number;
  rngBps?: number;
  network?: string[];
  publish?: string[];
  egress?: string[];
  label?: string[];
  volume?: string[];
  healthCmd?: string;
  healthInterval?: number;
  healthTimeout?: number;
  healthRetries?: number;
  healthStartPeriod?: number;
  interactive?: boolean;
  tty?: boolean;
  ttl?: number;
  idleTimeout?: number;
  idleAction?: IdleAction;
}

/** `cell run` flags and operands as the SDK's VM spec (pure, unit-tested). */
export function toVmSpec(args: string[], flags: RunFlags, host: HostTty = process): VmSpec {
  const operands = withoutSeparator(args);
  const [first, ...rest] = operands;
  if (flags.from && flags.template) throw new UsageError('give --from or --template, not both');
  const noImage = flags.from !== undefined || flags.template !== undefined;
  if (!noImage && !first) throw new UsageError('an image is required: cell run IMAGE [-- CMD...]');
  const req: VmSpec = flags.from
    ? { fromSnapshot: flags.from, cmd: operands }
    : flags.template
      ? { template: flags.template, cmd: operands }
      : { image: first, cmd: withoutSeparator(rest) };
  if (flags.name !== undefined) req.name = flags.name;
  if (flags.cpus !== undefined) req.cpus = flags.cpus;
  if (flags.memory !== undefined) req.memoryMib = flags.memory;
  if (flags.env?.length) req.env = flags.env;
  if (flags.workdir !== undefined) req.workingDir = flags.workdir;
  if (flags.user !== undefined) req.user = flags.user;
  if (flags.timeout !== undefined) req.commandTimeoutMs = milliseconds(flags.timeout);
  if (flags.rm) req.autoRemove = true;
  if (flags.dataDisk !== undefined) req.dataDiskMib = flags.dataDisk;
  const limits = {
    ...(flags.diskIops !== undefined ? { diskIops: flags.diskIops } : {}),
    ...(flags.diskBps !== undefined ? { diskBytesPerSec: flags.diskBps } : {}),
    ...(flags.rngBps !== undefined ? { rngBytesPerSec: flags.rngBps } : {}),
  };
  if (Object.keys(limits).length > 0) req.limits = limits;
  if (flags.network?.length) req.networks = flags.network;
  if (flags.publish?.length) req.ports = flags.publish.map((p) => parsePortSpec(p));
  if (flags.egress?.length) req.egress = flags.egress;
  if (flags.label?.length) req.labels = flags.label;
  if (flags.volume?.length) req.volumes = flags.volume.map((v) => absoluteMount(v));
  const health = healthCheck(flags);
  if (health) req.health = health;
  if (flags.interactive) req.stdin = true;
  if (flags.tty) {
    // A detached VM's terminal is sized for whoever attaches later: 80x24 until a resize.
    if (!flags.detach) checkTtyFlags(flags, host);
    Object.assign(req, { tty: true }, flags.detach ? {} : hostSize(host));
  }
  if (flags.ttl !== undefined) req.ttlMs = flags.ttl;
  if (flags.idleTimeout !== undefined) req.idleTimeoutMs = flags.idleTimeout;
  if (flags.idleAction !== undefined) req.idleAction = flags.idleAction;
  return req;
}

/** `--health-*` as the SDK's health check; the tuning flags mean nothing without a command. */
function healthCheck(flags: RunFlags): VmSpec['health'] {
  const tuning = {
    ...(flags.healthInterval !== undefined ? { intervalMs: flags.healthInterval } : {}),
    ...(flags.healthTimeout !== undefined ? { timeoutMs: flags.healthTimeout } : {}),
    ...(flags.healthRetries !== undefined ? { retries: flags.healthRetries } : {}),
    ...(flags.healthStartPeriod !== undefined ? { startPeriodMs: flags.healthStartPeriod } : {}),
  };
  if (flags.healthCmd === undefined) {
    if (Object.keys(tuning).length > 0) throw new UsageError('--health-interval, --health-timeout, --health-retries and --health-start-period need --health-cmd');
    return undefined;
  }
  return { cmd: flags.healthCmd, ...tuning };
}

/** With pass-through options commander keeps a `--` separator: it is not part of the command. */
export function withoutSeparator(args: string[]): string[] {
  return args[0] === '--' ? args.slice(1) : args;
}

export function register(program: Command): void {
  program
    .command('run')
    .description('boot a VM from an image (or fork a snapshot) and run a command in it')
    .summary('boot a VM and run a command in it')
    .argument('[image]', 'image to boot, e.g. busybox (omit with --from)')
    .argument('[command...]', "command and arguments, verbatim (default: the image's entrypoint/cmd)")
    .option('--name <name>', 'name the VM (default: a random name)')
    .option('--cpus <n>', 'virtual CPUs (default 1)', wholeNumber('--cpus'))
    .option('--memory <MiB>', 'guest memory in MiB (default 256)', wholeNumber('--memory', 'MiB'))
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory of the command')
    .option('-u, --user <user[:group]>', 'run as this user: a name from the image or uid[:gid] (default root)')
    .option('--timeout <sec>', 'kill the command after this many seconds (exit 124)', seconds('--timeout'))
    .option('--data-disk <MiB>', 'attach an empty ext4 disk of this size at /data (kept by snapshots and forks)', wholeNumber('--data-disk', 'MiB'))
    .option('--disk-iops <n>', 'cap disk operations per second, per disk (QEMU throttling; forks keep it)', wholeNumber('--disk-iops'))
    .option('--disk-bps <rate>', 'cap disk bytes per second, per disk, e.g. 20M', byteSize('--disk-bps'))
    .option('--rng-bps <rate>', 'cap the bytes per second the guest draws from the host entropy device, e.g. 4K', byteSize('--rng-bps'))
    .option('--network <name>', 'a network to be on (repeatable; the first is its way out): default (online through NAT; the default), one of cell network ls (celld as root only), or none (no NIC)', collect)
    .option('-p, --publish <[ip:][hostPort:]port[/udp]>', 'publish a guest port on the host (repeatable); binds 127.0.0.1 unless an address is given, unlike Docker; no host port: a free one (see cell port)', collect)
    .option('-v, --volume <SOURCE:/path[:ro]>', 'mount a named volume (made if missing, 10G sparse) or share a host folder (./src, /abs/path, ~/x: live, as you, guest writes as root) at a guest path, read-only with :ro (repeatable: up to 8 volumes, 4 folders); one running VM writes a volume at a time; VMs with host folders cannot be snapshotted', collect)
    .option('--label <KEY=VALUE>', 'a label for inspect and filters (repeatable; ps --filter label=KEY=VALUE); with --from, added to the snapshot\'s', collect)
    .option('--egress <allow=RULES|deny=RULES>', 'what it may reach outside (repeatable): RULES are domains (pypi.org, *.pythonhosted.org: matched on HTTP Host and TLS SNI, and DNS) and IPv4 CIDRs; with any allow rule the rest is denied; deny wins; enforced on the host, so celld must be root', collect)
    .option('-i, --interactive', "keep the command's stdin open: cell's stdin goes to it (with -d: for cell attach)")
    .option('-t, --tty', "run the command on a terminal in the guest (with -i: this terminal in raw mode, its size passed on; with -d: cell attach later)")
    .option('--health-cmd <command>', 'a health check run in the guest under /bin/sh -c; exit 0 is healthy (shown by ps, inspect, events; cell wait --healthy)')
    .option('--health-interval <duration>', 'time between checks, e.g. 5s (default 30s)', durationMs('--health-interval'))
    .option('--health-timeout <duration>', 'a check running longer fails (default 30s)', durationMs('--health-timeout'))
    .option('--health-retries <n>', 'failures in a row that make it unhealthy (default 3)', wholeNumber('--health-retries'))
    .option('--health-start-period <duration>', 'failures this soon after boot do not count (default 0s)', durationMs('--health-start-period'))
    .option('--ttl <duration>', 'stop the VM this long after it starts (with --rm: remove it), e.g. 30m; cell update changes it', durationMs('--ttl'))
    .option('--idle-timeout <duration>', 'after this long without exec, cp or published-port traffic: --idle-action', durationMs('--idle-timeout'))
    .option('--idle-action <action>', 'what an idle timeout does: stop (default), pause (no CPU; RAM kept) or pause-to-disk (RAM freed; unpause restores it)', oneOf('--idle-action', IDLE_ACTIONS))
    .option('--rm', 'remove the VM when the command ends')
    .option('-d, --detach', 'print the VM id and leave it running (exec into it later)')
    .option('--from <snapshot>', 'fork this snapshot instead of booting an image (a registry reference host/repo:tag is pulled on first use)')
    .option('--template <name[:role]>', "start from a template: forked warm from its snapshot when it has one, else booted cold (says which); a registry reference (REGISTRY/REPO:TAG) is pulled on first use")
    .passThroughOptions()
    .addHelpText(
      'after',
      `
Everything after IMAGE (or after --) is the command, flags included: cell run busybox ls -la.
The VM stops when the command ends (with --rm it is also removed); with -d it keeps running
until 'cell stop'. Output streams as it is produced. The first run on a new host also sets the
host up (kernel, initramfs, ...; see 'cell setup'), which can take minutes.

Exit codes:
  the command's own   when it ran
  124                 it was killed after --timeout
  126 / 127           it could not be executed / was not found
  128+N               it was killed by signal N
  125                 cell could not start it: bad flags, unknown image, the VM failed to boot
  130 / 143           cell was interrupted (Ctrl-C / SIGTERM); the VM is stopped (and removed with --rm)

Examples:
  cell run --rm busybox -- sh -c 'echo hello from $(hostname)'
  cell run -d --name box --memory 512 busybox
  cell run --rm --timeout 5 -e MODE=test busybox -- ./run-tests.sh
  cell run --rm --from warm -- cat /etc/hostname
  cell run --rm --template web:server -- wget -q -O- http://127.0.0.1:8080/
  cell run -it --rm busybox -- sh                          # an interactive shell in a new VM
  cell run -d -it --name box busybox -- sh && cell attach box   # Ctrl-P Ctrl-Q detaches
  cell run -d --rm --ttl 1h --idle-timeout 10m busybox      # gone after an hour, or 10 idle minutes
  cell run -d --name web -p 8080:80 --health-cmd 'wget -q -O /dev/null http://127.0.0.1/' \\
      --health-interval 2s nginx && cell wait --healthy --timeout 60s web`,
    )
    .action(async (image: string | undefined, command: string[], flags: RunFlags, cmd: Command) => {
      process.exitCode = await run(toVmSpec([...(image !== undefined ? [image] : []), ...command], flags), flags, cmd);
    });
}

async function run(req: VmSpec, flags: RunFlags, cmd: Command): Promise<number> {
  let client: CellClient;
  try {
    client = await connect(cmd);
  } catch (err) {
    reportError(err);
    return EXIT_RUN_FAILED;
  }
  try {
    if (flags.detach) {
      const vm = await client.vms.create(req);
      reportTemplateStart(vm);
      process.stdout.write(`${vm.id}\n`);
      return 0;
    }
    return await attached(client, req, flags);
  } catch (err) {
    reportError(err);
    return EXIT_RUN_FAILED;
  } finally {
    client.close();
  }
}

async function attached(client: CellClient, req: VmSpec, flags: RunFlags): Promise<number> {
  const interrupt = interruptible();
  let execId: string | undefined;
  // With -t: raw mode until the command ended (restored in finally, and on exit whatever the path).
  const terminal = req.tty
    ? rawTerminal(process, (size) => {
        if (execId) client.vms.resizeExec(execId, size).catch(() => {});
      })
    : undefined;
  // celld may set the host up or pull the image first: show that on a terminal only, so that a
  // script's stderr holds nothing but the command's.
  const progress = process.stderr.isTTY ? (await import('../setup-progress.js')).setupProgress() : undefined;
  const pullLine = progress ? (await import('../pull-progress.js')).pullLine : undefined;
  let started = false;
  try {
    const result = await client.vms.run(req, {
      ...passThrough,
      signal: interrupt.signal,
      onProgress: (e) => progress?.onProgress(e),
      onPull: (e) => {
        const line = pullLine?.(e);
        if (line) progress?.line(line);
      },
      onRunning: (vm) => {
        started = true;
        progress?.stop();
        reportTemplateStart(vm);
      },
      ...(flags.interactive ? { stdin: process.stdin } : {}),
      onExec: (id) => {
        execId = id;
        const now = hostSize(process);
        if (req.tty && (now.cols !== req.cols || now.rows !== req.rows)) client.vms.resizeExec(id, now).catch(() => {});
      },
    });
    return commandExit(result, flags.timeout);
  } catch (err) {
    progress?.stop();
    const interrupted = interrupt.code();
    if (interrupted !== null) return interrupted;
    reportError(err);
    return started ? EXIT_FAILURE : EXIT_RUN_FAILED;
  } finally {
    terminal?.restore();
    interrupt.dispose();
    // Reading stdin keeps the process alive: let go of it once the command has ended.
    if (flags.interactive) process.stdin.destroy();
  }
}

/** `run --template` says how the VM started: forked warm, or booted cold and why. */
function reportTemplateStart(vm: Vm): void {
  const t = vm.spec.template;
  if (!t) return;
  const how = t.start === 'warm' ? 'warm start' : 'cold boot';
  process.stderr.write(`cell: template ${t.name} (revision ${t.revision.slice(0, 12)}): ${how}, ${t.reason}\n`);
}
