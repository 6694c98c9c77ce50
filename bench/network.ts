/**
 * Networking (issue 11's benchmark), in one script, confined: celld runs inside the host namespace
 * of a fake internet (test/helpers/fake-internet.ts), so nothing leaves this machine; the client of
 * every transfer is bench/net-peer.ts in that same namespace, where published ports listen.
 *
 * 1. bulk TCP through a published port, guest -> host (the guest's busybox httpd serves a file
 *    made with dd, the client GETs it) and host -> guest (the client sends to a busybox `nc -ll`
 *    sink that answers with its byte count), against the same transfer over loopback in that
 *    namespace between two host processes: the same busybox servers, and Node servers (the
 *    ceiling). MB/s of each and the ratios;
 * 2. connection setup: N short GETs of a tiny file, one after another, through a published port
 *    against the same over loopback: connections/s and the ratios;
 * 3. cold `cell run --rm busybox -- true` and `cell fork` of a snapshot (CLI process to exit, and
 *    the fork call alone through the SDK), with a NIC and a published port (default) and without
 *    (--network none): medians of interleaved runs, ratios (issue 11's target <= 1.10 for the fork);
 * 4. BENCH_FLEET (20) networked forks at once with `cell fork --count`: the time (and the same
 *    number of forks without a NIC), distinct addresses, every fork serving on its own port.
 *
 * BENCH_RUNS (5) of each measurement, sides interleaved, the first side alternating;
 * BENCH_NET_MIB (64) MiB per bulk transfer; BENCH_NET_CONNS (200) connections per rate run;
 * BENCH_NET_PARTS=bulk,fork,fleet (all by default) runs only some; BENCH_CELLD_LOG=FILE keeps
 * celld's log (with CELL_TRACE=1: the boot and network phases of every VM).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createHash } from 'node:crypto';
import { CellClient } from '../src/sdk/index.js';
import { listNamespaces } from '../src/network/vm-namespace.js';
import { ADDR, createFakeInternet, type FakeInternet } from '../test/helpers/fake-internet.js';
import { benchHome, fmt, median, qemuPidsOf, REPO, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const MIB = Number(process.env.BENCH_NET_MIB ?? 64);
const CONNS = Number(process.env.BENCH_NET_CONNS ?? 200);
const FLEET = Number(process.env.BENCH_FLEET ?? 20);
const PARTS = new Set((process.env.BENCH_NET_PARTS ?? 'bulk,fork,fleet').split(','));
const BYTES = MIB * 2 ** 20;
/** Loopback servers in the host namespace (ours alone: nothing else listens there). */
const PORTS = { busybox: { http: 18080, sink: 18081 }, node: { http: 18090, sink: 18091 } };
/** The busybox sink: reads exactly BYTES in 64 KiB blocks (dd: busybox's `head -c` costs 4x more
 *  CPU), then answers dd's last line, `N+0 records out`, N full blocks. */
const BLOCKS = BYTES / 65536;
const SINK = `dd bs=65536 count=${BLOCKS} iflag=fullblock of=/dev/null 2>&1 | tail -n 1`;
const SINK_ANSWER = `${BLOCKS}+0 records out`;
const PEER = join(REPO, 'bench', 'net-peer.ts');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mbps = (ms: number) => BYTES / 1e6 / (ms / 1000);
const perSec = (ms: number) => CONNS / (ms / 1000);
const list = (xs: number[], f: (x: number) => string = fmt) => `[${xs.map(f).join(', ')}]`;

type Dl = { ms: number; body: number; status: number };
type Ul = { ms: number; reply: string };
type Cr = { ms: number; ok: number; failed: number; sample: string };
type Call = <T>(cmd: Record<string, unknown>) => Promise<T>;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function stopPid(pid: number | undefined, graceMs = 10_000): Promise<void> {
  if (!pid || !alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (const end = Date.now() + graceMs; Date.now() < end && alive(pid); ) await sleep(50);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

/** CPU time of each thread of `pid`, by thread id, in clock ticks (100 a second). */
function cpuByThread(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
      out.set(tid, Number(fields[11]) + Number(fields[12])); // utime, stime
    } catch {
      /* the thread ended */
    }
  }
  return out;
}

/**
 * Where the CPU goes while the guest side of a transfer runs: QEMU (all its threads, and its
 * busiest one: under TCG the vCPU's) and celld (its port proxy), in cores busy on average.
 */
class CpuMeter {
  private ms = 0;
  private qemu = 0;
  private qemuBusiest = 0;
  private celld = 0;
  constructor(
    private readonly qemuPid: number,
    private readonly celldPid: number,
  ) {}
  async measure(work: () => Promise<number>): Promise<number> {
    const q0 = cpuByThread(this.qemuPid);
    const c0 = cpuByThread(this.celldPid);
    const t = performance.now();
    const result = await work();
    this.ms += performance.now() - t;
    const deltas = (before: Map<string, number>, after: Map<string, number>) => [...after].map(([tid, v]) => v - (before.get(tid) ?? 0));
    const q = deltas(q0, cpuByThread(this.qemuPid));
    this.qemu += q.reduce((a, b) => a + b, 0);
    this.qemuBusiest += Math.max(0, ...q);
    this.celld += deltas(c0, cpuByThread(this.celldPid)).reduce((a, b) => a + b, 0);
    return result;
  }
  toString(): string {
    const cores = (ticks: number) => (ticks / 100 / (this.ms / 1000)).toFixed(2);
    return `QEMU ${cores(this.qemu)} (its busiest thread ${cores(this.qemuBusiest)}), celld ${cores(this.celld)}`;
  }
}

/** Everything the script starts, for the clean-up whatever happens. */
class Run {
  readonly h = benchHome();
  readonly homeTag = createHash('sha256').update(this.h.home).digest('hex').slice(0, 6);
  readonly loDir = mkdtempSync('/tmp/cellnb-');
  net?: FakeInternet;
  celld?: ChildProcess;
  client?: CellClient;
  peer?: ChildProcess;
  readonly hostProcesses: ChildProcess[] = [];
  interrupted = false;
  /** The CLI's environment: networking off, so a celld it started by accident (ours died) could not put VMs on the real network. */
  readonly env = { ...this.h.env, CELL_NETWORK: 'off' };

  /** A long-lived process in the host namespace (nsenter execs it: the pid is the program's own). */
  inHost(cmd: string[], stdio: 'ignore' | 'pipe' = 'ignore'): ChildProcess {
    const child = spawn('nsenter', [`--net=/run/netns/${this.net!.hostNs}`, '--', ...cmd], { stdio: ['pipe', stdio, 'inherit'] });
    this.hostProcesses.push(child);
    return child;
  }

  async startCelld(): Promise<void> {
    const { home } = this.h;
    const log = openSync(join(home, 'celld.log'), 'a', 0o600);
    this.celld = spawn('nsenter', [`--net=/run/netns/${this.net!.hostNs}`, '--', process.execPath, join(REPO, 'bin', 'celld')], {
      // Networking on, the VMs' DNS relayed to the fake internet's.
      env: { ...this.h.env, CELL_NETWORK: 'on', CELL_DNS_SERVERS: ADDR.dns },
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    for (const end = Date.now() + 30_000; !existsSync(join(home, 'celld.sock')); await sleep(50)) {
      if (Date.now() > end || this.celld.exitCode !== null) throw new Error(`celld did not come up: ${readFileSync(join(home, 'celld.log'), 'utf8').slice(-2000)}`);
    }
    this.client = await CellClient.connect({ home, autoStart: false });
    await this.client.setup({});
    const info = await this.client.info();
    if (!info.network.available) throw new Error(`celld has no networking: ${info.network.reason}`);
  }

  /** bench/net-peer.ts as a client in the host namespace; `call` sends one command and waits for its answer. */
  async startPeer(): Promise<Call> {
    const child = this.inHost([process.execPath, '--import', import.meta.resolve('tsx'), PEER], 'pipe');
    this.peer = child;
    const waiting = new Map<number, (r: { error?: string }) => void>();
    let next = 1;
    const lines = createInterface({ input: child.stdout! });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('net-peer did not start in 30 s')), 30_000);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`net-peer exited (${code})`));
        for (const w of waiting.values()) w({ error: 'net-peer exited' });
      });
      lines.on('line', (line) => {
        const msg = JSON.parse(line) as { id: number; ready?: boolean; error?: string };
        if (msg.ready) {
          clearTimeout(timer);
          resolve();
        } else waiting.get(msg.id)?.(msg);
      });
    });
    return <T>(cmd: Record<string, unknown>) =>
      new Promise<T>((res, rej) => {
        const id = next++;
        waiting.set(id, (r) => (r.error ? rej(new Error(`${String(cmd.op)}: ${r.error}`)) : res(r as T)));
        child.stdin!.write(JSON.stringify({ id, ...cmd }) + '\n');
      });
  }

  async cell(args: string[]) {
    const r = await runCell(args, this.env);
    if (r.code !== 0) throw new Error(`cell ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return r;
  }

  async removeVms(prefix = ''): Promise<void> {
    for (const v of await this.client!.vms.list({ all: true })) if (v.name.startsWith(prefix)) await this.client!.vms.remove(v.id, { force: true });
  }

  async cleanup(): Promise<void> {
    this.peer?.kill('SIGKILL');
    for (const p of this.hostProcesses) await stopPid(p.pid, 1000).catch(() => {});
    await this.removeVms().catch(() => {});
    this.client?.close();
    await stopPid(this.celld?.pid);
    for (const pid of qemuPidsOf(this.h.home)) await stopPid(pid, 2000);
    // Namespaces of this home's VMs (a celld that died would leave them).
    for (const ns of await listNamespaces()) {
      if (ns.startsWith(`cell-${this.homeTag}-`)) await new Promise((r) => spawn('ip', ['netns', 'del', ns]).on('close', r));
    }
    if (process.env.BENCH_CELLD_LOG) copyFileSync(join(this.h.home, 'celld.log'), process.env.BENCH_CELLD_LOG);
    this.h.close();
    rmSync(this.loDir, { recursive: true, force: true });
    await this.net?.remove();
  }
}

/** Waits until GET /small answers 200 on `port` (a server in a guest takes a moment under TCG). */
async function waitServing(call: Call, port: number): Promise<void> {
  for (let i = 0; ; i++) {
    const r = await call<Dl>({ op: 'download', port, path: '/small', timeoutMs: 5000 }).catch(() => null);
    if (r?.status === 200) return;
    if (i > 300) throw new Error(`nothing serves on port ${port}`);
    await sleep(200);
  }
}

/** Parts 1 and 2: bulk throughput both ways and connection setup, guest against loopback. */
async function bulk(run: Run, call: Call): Promise<void> {
  const guestScript = [
    // On /tmp (tmpfs): the root disk has little room.
    'mkdir -p /tmp/www && echo ok > /tmp/www/small',
    `dd if=/dev/zero of=/tmp/www/big bs=1M count=${MIB} 2>/dev/null`,
    `(nc -ll -p 81 -e sh -c '${SINK}' >/dev/null 2>&1 &)`,
    'exec httpd -f -p 80 -h /tmp/www',
  ].join(' && ');
  // RAM for the file on tmpfs besides the guest's own.
  await run.cell(['run', '-d', '--name', 'bulk', '--memory', String(Math.max(256, MIB * 2 + 192)), '-p', '80', '-p', '81', 'busybox', '--', 'sh', '-c', guestScript]);
  await run.net!.assertConfined(); // the bridge, veth and tap exist now: still no way out but the fake internet
  const vm = await run.client!.vms.get('bulk');
  const portOf = (guestPort: number) => vm.network!.ports.find((p) => p.guestPort === guestPort)!.hostPort;

  writeFileSync(join(run.loDir, 'small'), 'ok\n');
  writeFileSync(join(run.loDir, 'big'), Buffer.alloc(BYTES));
  run.inHost(['busybox', 'httpd', '-f', '-p', `127.0.0.1:${PORTS.busybox.http}`, '-h', run.loDir]);
  run.inHost(['busybox', 'nc', '-ll', '-p', String(PORTS.busybox.sink), '-e', 'sh', '-c', SINK]);
  run.inHost([process.execPath, '--import', import.meta.resolve('tsx'), PEER, 'serve', String(PORTS.node.http), String(PORTS.node.sink), String(BYTES)]);

  const side = (label: string, ports: { http: number; sink: number }, answer: string) => ({ label, ...ports, answer, dl: [] as number[], ul: [] as number[], cr: [] as number[] });
  const sides = [
    side('guest (published port)', { http: portOf(80), sink: portOf(81) }, SINK_ANSWER),
    side('busybox over loopback', PORTS.busybox, SINK_ANSWER),
    side('Node over loopback', PORTS.node, String(BYTES)),
  ];
  type Side = (typeof sides)[number];
  for (const s of sides) await waitServing(call, s.http);

  const download = async (port: number) => {
    const r = await call<Dl>({ op: 'download', port, path: '/big' });
    if (r.status !== 200 || r.body !== BYTES) throw new Error(`download from port ${port}: status ${r.status}, ${r.body} of ${BYTES} bytes`);
    return r.ms;
  };
  const upload = async (s: Side) => {
    const r = await call<Ul>({ op: 'upload', port: s.sink, bytes: BYTES });
    if (r.reply !== s.answer) throw new Error(`upload to ${s.label}: the sink answered ${r.reply}, not ${s.answer}`);
    return r.ms;
  };
  const connections = async (port: number) => {
    const r = await call<Cr>({ op: 'connect', port, n: CONNS, path: '/small', timeoutMs: 300_000 });
    if (r.ok !== CONNS || r.sample !== 'ok\n') throw new Error(`connections to port ${port}: ${r.ok} of ${CONNS} ok, ${r.failed} failed`);
    return r.ms;
  };
  const meters = { dl: new CpuMeter(vm.pid!, run.celld!.pid!), ul: new CpuMeter(vm.pid!, run.celld!.pid!), cr: new CpuMeter(vm.pid!, run.celld!.pid!) };
  const timed = (s: Side, key: 'dl' | 'ul' | 'cr', work: () => Promise<number>) => (s === sides[0] ? meters[key].measure(work) : work());
  // One of each first, unmeasured: TCG translates the guest's code paths on first use.
  for (const s of sides) {
    await download(s.http);
    await upload(s);
  }
  for (let i = 0; i < RUNS && !run.interrupted; i++) {
    const order = [...sides.slice(i % sides.length), ...sides.slice(0, i % sides.length)];
    for (const s of order) s.dl.push(await timed(s, 'dl', () => download(s.http)));
    for (const s of order) s.ul.push(await timed(s, 'ul', () => upload(s)));
    for (const s of order) s.cr.push(await timed(s, 'cr', () => connections(s.http)));
  }
  await run.client!.vms.remove('bulk', { force: true });

  const [guest, bb, node] = sides as [(typeof sides)[0], (typeof sides)[0], (typeof sides)[0]];
  const lines = [`bulk TCP, ${MIB} MiB per transfer, ${RUNS} runs each, interleaved (MB = 10^6 bytes; ratio: guest / loopback):`];
  for (const [what, key] of [
    ['guest -> host (GET of a file)', 'dl'],
    ['host -> guest (to a sink)', 'ul'],
  ] as const) {
    lines.push(`  ${what}:`);
    for (const s of sides) lines.push(`    ${s.label.padEnd(23)} median ${mbps(median(s[key])).toFixed(1).padStart(7)} MB/s ${list(s[key], (ms) => mbps(ms).toFixed(1))}`);
    lines.push(`    ratio ${(median(bb[key]) / median(guest[key])).toFixed(3)} of busybox, ${(median(node[key]) / median(guest[key])).toFixed(3)} of Node`);
    lines.push(`    cores busy during the guest's transfers: ${meters[key]}`);
  }
  lines.push(`connection setup, ${CONNS} short GETs one after another, ${RUNS} runs each:`);
  for (const s of sides) lines.push(`    ${s.label.padEnd(23)} median ${perSec(median(s.cr)).toFixed(0).padStart(5)} conn/s ${list(s.cr, (ms) => perSec(ms).toFixed(0))}`);
  lines.push(`    ratio ${(median(bb.cr) / median(guest.cr)).toFixed(3)} of busybox, ${(median(node.cr) / median(guest.cr)).toFixed(3)} of Node`);
  lines.push(`    cores busy during the guest's runs: ${meters.cr}`);
  console.log(lines.join('\n'));
}

/** A networked snapshot `net` (publishing port 80) and one without a NIC, `none`, of the same guest. */
async function snapshots(run: Run, call: Call): Promise<void> {
  const serve = 'mkdir -p /www && echo ok > /www/small && exec httpd -f -p 80 -h /www';
  await run.cell(['run', '-d', '--name', 'src-net', '-p', '80', 'busybox', '--', 'sh', '-c', serve]);
  await run.cell(['run', '-d', '--name', 'src-none', '--network', 'none', 'busybox', '--', 'sh', '-c', serve]);
  await run.net!.assertConfined();
  await waitServing(call, (await run.client!.vms.get('src-net')).network!.ports[0]!.hostPort);
  await run.cell(['exec', 'src-none', '--', 'sh', '-c', 'until wget -q -O /dev/null http://127.0.0.1/small; do sleep 0.2; done']);
  await run.cell(['snapshot', '--name', 'net', 'src-net']);
  await run.cell(['snapshot', '--name', 'none', 'src-none']);
  await run.removeVms('src-');
  // A first fork of each: spares from now on.
  for (const s of ['net', 'none']) await run.client!.snapshots.fork(s, { name: `first-${s}` });
  await run.removeVms('first-');
}

/** Every snapshot has its spare again (each fork starts the next one in the background). */
async function sparesReady(run: Run): Promise<void> {
  for (const end = Date.now() + 60_000; Date.now() < end; await sleep(50)) {
    if ((await run.client!.info()).spares >= 2) return void (await sleep(300));
  }
  console.log('  (a spare did not come back within 60 s)');
}

/** Part 3: cold run and fork with and without a NIC. */
async function forks(run: Run): Promise<void> {
  const m = { net: { cold: [] as number[], cli: [] as number[], sdk: [] as number[] }, none: { cold: [] as number[], cli: [] as number[], sdk: [] as number[] } };
  for (let i = 0; i < RUNS && !run.interrupted; i++) {
    const order = i % 2 ? (['none', 'net'] as const) : (['net', 'none'] as const);
    for (const side of order) m[side].cold.push((await run.cell(['run', '--rm', ...(side === 'none' ? ['--network', 'none'] : []), 'busybox', '--', 'true'])).ms);
    for (const side of order) {
      await sparesReady(run);
      m[side].cli.push((await run.cell(['fork', '--name', `cli-${side}-${i}`, side])).ms);
      await run.removeVms(`cli-${side}-`);
    }
    for (const side of order) {
      await sparesReady(run);
      const started = performance.now();
      const [vm] = await run.client!.snapshots.fork(side, { name: `sdk-${side}-${i}` });
      m[side].sdk.push(performance.now() - started);
      await run.client!.vms.remove(vm!.id, { force: true });
    }
  }
  const row = (label: string, key: 'cold' | 'cli' | 'sdk', target = '') =>
    `  ${label.padEnd(32)} median ${fmt(median(m.net[key]))} ${list(m.net[key])} vs ${fmt(median(m.none[key]))} ${list(m.none[key])}: ratio ${(median(m.net[key]) / median(m.none[key])).toFixed(2)}${target}`;
  console.log(
    [
      `with a NIC (default; the fork's snapshot publishes a port) vs --network none, ${RUNS} runs each, interleaved, forks taking a spare:`,
      row('cell run --rm busybox -- true', 'cold'),
      row('cell fork SNAPSHOT (CLI process)', 'cli', ' (target <= 1.10)'),
      row('fork call through the SDK', 'sdk'),
    ].join('\n'),
  );
}

/** Part 4: a fleet of networked forks at once, against as many without a NIC. */
async function fleet(run: Run, call: Call): Promise<void> {
  await sparesReady(run);
  await run.net!.assertConfined();
  const networked = await run.cell(['fork', '--count', String(FLEET), '--name', 'fleet', 'net']);
  const vms = (await run.client!.vms.list({})).filter((v) => v.name.startsWith('fleet-'));
  const addresses = new Set(vms.map((v) => v.network?.networks[0]?.address));
  const hostPorts = vms.map((v) => v.network!.ports[0]!.hostPort);
  const answers = await Promise.all(hostPorts.map((port) => call<Dl>({ op: 'download', port, path: '/small', timeoutMs: 30_000 }).catch(() => null)));
  const serving = answers.filter((r) => r?.status === 200 && r.body === 3).length;
  await run.removeVms('fleet-');
  await sparesReady(run);
  const quiet = await run.cell(['fork', '--count', String(FLEET), '--name', 'quiet', 'none']);
  await run.removeVms('quiet-');
  console.log(
    [
      `${FLEET} forks at once (cell fork --count ${FLEET}, CLI process):`,
      `  networked ${fmt(networked.ms)} (${fmt(networked.ms / FLEET)} per fork) vs --network none ${fmt(quiet.ms)}: ratio ${(networked.ms / quiet.ms).toFixed(2)}`,
      `  ${vms.length} running, ${addresses.size} distinct addresses, ${new Set(hostPorts).size} distinct host ports, ${serving} of ${vms.length} answered on their published port`,
    ].join('\n'),
  );
  if (vms.length !== FLEET || addresses.size !== FLEET || serving !== FLEET) process.exitCode = 1;
}

async function main(): Promise<void> {
  const run = new Run();
  const onSignal = () => {
    // Unwind through the finally below: what waits on the peer fails, then all is cleaned up.
    run.interrupted = true;
    run.peer?.kill('SIGKILL');
  };
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    run.net = await createFakeInternet({ allowLink: (l) => l.kind === 'bridge' || l.kind === 'veth' || l.kind === 'tun' });
    await run.net.assertConfined();
    await run.startCelld();
    const call = await run.startPeer();
    if (PARTS.has('bulk')) await bulk(run, call);
    if (PARTS.has('fork') || PARTS.has('fleet')) await snapshots(run, call);
    if (PARTS.has('fork')) await forks(run);
    if (PARTS.has('fleet')) await fleet(run, call);
  } finally {
    process.removeListener('SIGINT', onSignal).removeListener('SIGTERM', onSignal);
    await run.cleanup();
  }
}

await main();
