/**
 * A fake internet for network tests: nothing they send may leave this machine
 * (shared/notes/network-and-storage-facts.md, "the rule for network tests").
 *
 * Two network namespaces of the test's own, joined by one veth pair:
 *
 *   HOST namespace  cellh-<tag>   where the test runs celld (its NAT, bridges, published ports)
 *     lo, vh-<tag> 192.0.2.2/24, default via 192.0.2.1: its only way out
 *   INTERNET namespace  celli-<tag>   a dead end: no default route, no other link
 *     lo carrying 198.51.100.10 (site A), 198.51.100.20 (site B), 203.0.113.53 (DNS),
 *     vi-<tag> 192.0.2.1/24
 *
 * Addresses are from the TEST-NET ranges (never routed on the real internet). Both ends of the
 * link live in the test's own namespaces, so the same plan in two test files at once cannot
 * collide: nothing is added to the root namespace at all. The servers (HTTP/HTTPS by SNI with a
 * CA made for this run, DNS, UDP echo) are one child process in the internet namespace
 * (fake-internet-server.ts) that logs every connection and query for the test to read.
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import type { Socket } from 'node:net';
import type { ServerConfig } from './fake-internet-server.js';

/** The address plan (the same in every instance: each lives in namespaces of its own). */
export const ADDR = {
  /** The host namespace's side of the link: its "public" address, the source the internet sees. */
  host: '192.0.2.2',
  /** The internet's side of the link, the host namespace's default gateway. */
  gateway: '192.0.2.1',
  linkPrefix: 24,
  siteA: '198.51.100.10',
  siteB: '198.51.100.20',
  dns: '203.0.113.53',
} as const;

export const DEFAULT_NAMES: Readonly<Record<string, string>> = {
  'site-a.test': ADDR.siteA,
  'www.site-a.test': ADDR.siteA,
  'site-b.test': ADDR.siteB,
};

export interface SiteSpec {
  /** Short id, reported as `site` in every reply and log entry. */
  id: string;
  /** Must be in 192.0.2.0/24 (but not the link's two), 198.51.100.0/24, 203.0.113.0/24 or 100.64.0.0/10. */
  address: string;
  /** DNS names: each resolves to `address` and is in the site's certificate. */
  names: string[];
}

export interface LinkInfo {
  name: string;
  /** `ip -d link`'s info_kind: bridge, tun, veth, ...; undefined for lo and plain devices. */
  kind: string | undefined;
}

export interface FakeInternetOptions {
  /** More DNS names, name -> address(es), on top of DEFAULT_NAMES (or replacing one). A name that
   *  maps to a site's address also goes into that site's certificate. */
  names?: Record<string, string | string[]>;
  /** Sites besides A and B, each with HTTP, HTTPS and DNS names of its own. */
  extraSites?: SiteSpec[];
  /** TTL of the A records in seconds (default 5; 0 for rebinding tests). */
  ttl?: number;
  /** Links besides lo and the veth that assertConfined accepts in the host namespace: celld's
   *  bridges, TAPs, per-VM veths. Routes on them are accepted too; the default route is not. */
  allowLink?: (link: LinkInfo) => boolean;
  /** Give the host namespace an /etc/resolv.conf naming the fake DNS (via /etc/netns/<ns>/, which
   *  `ip netns exec` mounts over /etc), so celld and getent there resolve through it. Default true. */
  resolvConf?: boolean;
  /** How long the servers may take to come up (default 20 s: tsx on a busy 2-core machine). */
  startTimeoutMs?: number;
}

export interface Site extends SiteSpec {
  certPath: string;
}

export type Client = { address: string; port: number };

export type LogEntry = { t: number } & (
  | { kind: 'connect'; site: string; scheme: 'http' | 'https'; local: string; client: Client }
  | {
      kind: 'http';
      site: string;
      scheme: 'http' | 'https';
      local: string;
      method: string;
      path: string;
      host: string | null;
      sni: string | null;
      client: Client;
      /** /bytes: bytes sent; /sink: bytes received. */
      bytes?: number;
    }
  /** A TLS handshake the server completed (the client may still refuse the certificate after it). */
  | { kind: 'tls'; site: string; sni: string | null; client: Client }
  /** A TLS handshake that failed on the server's side. */
  | { kind: 'tls-error'; site: string; sni: string | null; client: Client; error: string }
  | { kind: 'dns'; proto: 'udp' | 'tcp'; name: string; type: number; client: Client; rcode: number; answers: string[] }
  | { kind: 'dns-malformed'; proto: 'udp' | 'tcp'; client: Client; bytes: number; reason: string }
  | { kind: 'udp-echo'; client: Client; bytes: number }
);

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  /** Killed after this long (default 30 s): tests' commands are bounded. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** What exists in the test's namespaces, for before/after comparisons within a test. */
export interface NamespaceCounts {
  /** All network namespaces on the machine (`ip netns list`), other tests' included. */
  namespaces: number;
  hostLinks: number;
  hostAddresses: number;
  /** IPv4 and IPv6 routes in every table. */
  hostRoutes: number;
  /** iptables rules (-A lines of iptables-save) in the host namespace. */
  hostIptablesRules: number;
  hostProcesses: number;
  internetProcesses: number;
}

/** What exists on the machine, for leak checks across create and remove. */
export interface SystemState {
  namespaces: string[];
  rootLinks: string[];
  /** Entries under /etc/netns (resolv.conf overrides). */
  etcNetns: string[];
  /** This harness's temp dirs (cellvm-inet-*). */
  tempDirs: string[];
  /** Pids of fake-internet servers on the machine. */
  servers: number[];
}

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER_SCRIPT = join(HERE, 'fake-internet-server.ts');
const TEMP_PREFIX = 'cellvm-inet-';
const ETC_NETNS = '/etc/netns';

/** Run a command; resolves with its exit status whatever it is (rejects only if it cannot start). */
function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 30_000, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, env: opts.env, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: unknown; signal?: NodeJS.Signals }) | null;
        if (e && typeof e.code === 'string') return reject(e); // ENOENT and the like: it never ran
        resolve({ code: child.exitCode, signal: child.signalCode ?? e?.signal ?? null, stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Run and throw with its stderr unless it exits 0. */
async function ok(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.code ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

const ipJson = async <T>(args: string[]): Promise<T[]> => JSON.parse((await ok('ip', ['-j', ...args])) || '[]') as T[];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when every pid is gone (or 5 s past the kill). */
async function killPids(pids: number[], graceMs = 2000): Promise<void> {
  const signal = (p: number, s: NodeJS.Signals) => {
    try {
      process.kill(p, s);
    } catch {
      /* already gone */
    }
  };
  pids.forEach((p) => signal(p, 'SIGTERM'));
  const until = async (ms: number) => {
    for (const end = Date.now() + ms; Date.now() < end; ) {
      if (!pids.some(alive)) return true;
      await new Promise((r) => setTimeout(r, 25));
    }
    return !pids.some(alive);
  };
  if (await until(graceMs)) return;
  pids.filter(alive).forEach((p) => signal(p, 'SIGKILL'));
  await until(5000);
}

async function nsPids(ns: string): Promise<number[]> {
  const r = await run('ip', ['netns', 'pids', ns]);
  return r.code === 0 ? r.stdout.split('\n').filter(Boolean).map(Number) : [];
}

function inTestNet(address: string): boolean {
  const o = address.split('.').map(Number);
  if (o.length !== 4 || o.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) return false;
  const [a, b, c] = o as [number, number, number, number];
  return (
    (a === 192 && b === 0 && c === 2) ||
    (a === 198 && b === 51 && c === 100) ||
    (a === 203 && b === 0 && c === 113) ||
    (a === 100 && b >= 64 && b <= 127)
  );
}

/** Everything that exists on the machine that this harness could have made, by name. */
export async function systemState(): Promise<SystemState> {
  const namespaces = (await ipJson<{ name: string }>(['netns', 'list'])).map((n) => n.name).sort();
  const rootLinks = (await ipJson<{ ifname: string }>(['link', 'show'])).map((l) => l.ifname).sort();
  const etcNetns = existsSync(ETC_NETNS) ? readdirSync(ETC_NETNS).sort() : [];
  const tempDirs = readdirSync(tmpdir()).filter((d) => d.startsWith(TEMP_PREFIX)).sort();
  const servers: number[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(SERVER_SCRIPT)) servers.push(Number(pid));
    } catch {
      /* ended while we looked */
    }
  }
  return { namespaces, rootLinks, etcNetns, tempDirs, servers: servers.sort((a, b) => a - b) };
}

/** What `after` has that `before` had not, per field: a leak check's finding, empty when clean. */
export function addedSince(before: SystemState, after: SystemState): Partial<Record<keyof SystemState, (string | number)[]>> {
  const out: Partial<Record<keyof SystemState, (string | number)[]>> = {};
  for (const key of Object.keys(after) as (keyof SystemState)[]) {
    const had = new Set<string | number>(before[key]);
    const added = (after[key] as (string | number)[]).filter((x) => !had.has(x));
    if (added.length) out[key] = added;
  }
  return out;
}

interface Owner {
  pid: number;
  hostNs: string;
  internetNs: string;
}

/**
 * Remove what earlier test processes that died without cleaning up (kill -9, a crashed runner)
 * left: namespaces whose temp dir names an owner pid that is gone. A live owner's are never touched.
 */
export async function sweepStale(): Promise<void> {
  for (const d of readdirSync(tmpdir()).filter((x) => x.startsWith(TEMP_PREFIX))) {
    const dir = join(tmpdir(), d);
    let owner: Owner;
    try {
      owner = JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8')) as Owner;
    } catch {
      continue; // being made right now, or not ours to judge
    }
    if (alive(owner.pid)) continue;
    await teardown(owner.hostNs, owner.internetNs, dir, []);
  }
}

/** Kill what runs in both namespaces, delete them and their files. Never throws; returns what failed. */
async function teardown(hostNs: string, internetNs: string, dir: string, pids: number[]): Promise<string[]> {
  const errors: string[] = [];
  // Processes keep a deleted namespace alive (unnamed, invisible to `ip netns`): end them first.
  // Everything inside these namespaces was started by this test (directly, or by its celld).
  const inside = [...(await nsPids(hostNs)), ...(await nsPids(internetNs))];
  await killPids([...new Set([...pids, ...inside])].filter(alive));
  for (const ns of [hostNs, internetNs]) {
    const r = await run('ip', ['netns', 'del', ns]);
    // Deleting either namespace deletes both ends of the veth with it.
    if (r.code !== 0 && !/No such file/.test(r.stderr)) errors.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
  }
  for (const path of [join(ETC_NETNS, hostNs), dir]) {
    try {
      rmSync(path, { recursive: true, force: true });
    } catch (err) {
      errors.push(`rm ${path}: ${(err as Error).message}`);
    }
  }
  // Remove /etc/netns itself when empty (ip does not need it); rmdir fails if another test's
  // entry appeared meanwhile, which is as it should be.
  try {
    rmdirSync(ETC_NETNS);
  } catch {
    /* not empty, or not there */
  }
  return errors;
}

export interface FakeInternet {
  /** Random hex shared by every name this instance made. */
  readonly tag: string;
  readonly hostNs: string;
  readonly internetNs: string;
  /** The veth's end in the host namespace, and in the internet namespace. */
  readonly hostIf: string;
  readonly internetIf: string;
  readonly addr: typeof ADDR;
  /** By id: 'a', 'b' and any extra sites. */
  readonly sites: Readonly<Record<string, Site>>;
  /** The test CA's certificate (PEM), to copy into a guest, and its file. */
  readonly caPem: string;
  readonly caPath: string;
  /** This instance's temp dir (certificates, server config, log); removed with it. */
  readonly dir: string;
  readonly logPath: string;
  /** The server process's pid (in the internet namespace). */
  readonly serverPid: number;

  /** Run a command in the host namespace (`ip netns exec`); resolves with its status, never throws on exit codes. */
  inHost(cmd: string, args?: readonly string[], opts?: RunOptions): Promise<RunResult>;
  inInternet(cmd: string, args?: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** Start a long-lived process in the host namespace (celld). Its pid is the command's own (ip
   *  execs it); remove() ends it if it is still running. */
  spawnInHost(cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Throw unless the host namespace can reach nothing but the fake internet (see the function). */
  assertConfined(): Promise<void>;
  /** Every entry the servers logged so far, oldest first. */
  readLog(): LogEntry[];
  /** The first entry (already logged or yet to come) that `match` accepts; rejects after `timeoutMs`
   *  (default 5 s). For what the servers see after the client has moved on (a refused handshake). */
  waitForLog<E extends LogEntry>(match: (e: LogEntry) => e is E, timeoutMs?: number): Promise<E>;
  waitForLog(match: (e: LogEntry) => boolean, timeoutMs?: number): Promise<LogEntry>;
  /** Answer `name` with `addresses` from now on (null: NXDOMAIN). Resolves once the server has it. */
  setName(name: string, addresses: string | string[] | null): Promise<void>;
  counts(): Promise<NamespaceCounts>;
  /** End every process in both namespaces (SIGTERM, SIGKILL after 2 s), delete them (and the veth
   *  with them), remove the temp dir and the resolv.conf override. Idempotent. Every step is tried
   *  whatever failed before it; then it rejects listing what could not be removed. */
  remove(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Make the two namespaces, the link, the certificates and the servers. On any failure, everything made is removed before the error is thrown. */
export async function createFakeInternet(opts: FakeInternetOptions = {}): Promise<FakeInternet> {
  await sweepStale();
  const tag = randomBytes(4).toString('hex');
  const hostNs = `cellh-${tag}`;
  const internetNs = `celli-${tag}`;
  const hostIf = `vh-${tag}`;
  const internetIf = `vi-${tag}`;
  const dir = mkdtempSync(join(tmpdir(), `${TEMP_PREFIX}${tag}-`));
  // The owner file first: from here on a sweep after our death knows what to remove.
  writeFileSync(join(dir, 'owner.json'), JSON.stringify({ pid: process.pid, hostNs, internetNs } satisfies Owner));
  const spawned: ChildProcess[] = [];
  let server: ChildProcess | undefined;
  let removing: Promise<void> | undefined;
  const remove = () =>
    (removing ??= (async () => {
      const pids = [server, ...spawned].filter((c): c is ChildProcess => !!c?.pid && c.exitCode === null && c.signalCode === null).map((c) => c.pid!);
      const errors = await teardown(hostNs, internetNs, dir, pids);
      if (errors.length) throw new Error(`fake internet ${tag} not fully removed:\n${errors.join('\n')}`);
    })());

  try {
    const sites = siteSpecs(opts.extraSites ?? []);
    const names = nameMap(sites, opts.names ?? {});
    for (const s of sites) {
      // Names the test maps to a site's address are served with a valid certificate there too.
      for (const [n, addrs] of Object.entries(names)) if (addrs.includes(s.address) && !s.names.includes(n)) s.names.push(n);
    }

    await ok('ip', ['netns', 'add', hostNs]);
    await ok('ip', ['netns', 'add', internetNs]);
    // Made inside the namespaces: neither end of the veth ever exists in the root namespace.
    await ok('ip', ['-n', hostNs, 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', internetIf, 'netns', internetNs]);
    await ok('ip', ['-n', hostNs, '-batch', '-'], {
      input: [
        'link set lo up',
        `addr add ${ADDR.host}/${ADDR.linkPrefix} dev ${hostIf}`,
        `link set ${hostIf} up`,
        `route add default via ${ADDR.gateway} dev ${hostIf}`,
      ].join('\n'),
    });
    await ok('ip', ['-n', internetNs, '-batch', '-'], {
      input: [
        'link set lo up',
        `addr add ${ADDR.gateway}/${ADDR.linkPrefix} dev ${internetIf}`,
        `link set ${internetIf} up`,
        // The servers' addresses on lo: local to the internet, reached through its veth.
        ...[...new Set([...sites.map((s) => s.address), ADDR.dns])].map((a) => `addr add ${a}/32 dev lo`),
      ].join('\n'),
    });
    // Forwarding for celld's NAT, in the host namespace only; the internet forwards nothing
    // (explicitly: a new namespace may inherit the root's value with devconf_inherit_init_net).
    await ok('ip', ['netns', 'exec', hostNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
    await ok('ip', ['netns', 'exec', internetNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=0']);

    if (opts.resolvConf ?? true) {
      mkdirSync(join(ETC_NETNS, hostNs), { recursive: true });
      writeFileSync(join(ETC_NETNS, hostNs, 'resolv.conf'), `# fake internet ${tag}\nnameserver ${ADDR.dns}\noptions timeout:1 attempts:2\n`);
    }

    const caPath = join(dir, 'ca.pem');
    const certs = await makeCertificates(dir, sites);
    const logPath = join(dir, 'log.jsonl');
    writeFileSync(logPath, '');
    const config: ServerConfig = {
      log: logPath,
      sites: sites.map((s) => ({ ...s, cert: certs.get(s.id)!.cert, key: certs.get(s.id)!.key })),
      dns: { address: ADDR.dns, ttl: opts.ttl ?? 5, names },
      echo: { address: ADDR.siteA, port: 7 },
    };
    const configPath = join(dir, 'server.json');
    writeFileSync(configPath, JSON.stringify(config));

    const tsx = import.meta.resolve('tsx');
    server = spawn('ip', ['netns', 'exec', internetNs, process.execPath, '--import', tsx, SERVER_SCRIPT, configPath], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const control = await startServer(server, opts.startTimeoutMs ?? 20_000);
    const serverPid = server.pid!;
    // A test that forgets remove() still ends: the server exits when its stdin closes with us,
    // and the next createFakeInternet sweeps the namespaces of an owner that is gone.
    server.unref();
    for (const s of [server.stdin, server.stdout, server.stderr]) (s as unknown as Socket | null)?.unref();

    const siteRecord: Record<string, Site> = {};
    for (const s of sites) siteRecord[s.id] = { ...s, certPath: certs.get(s.id)!.cert };

    const inNs = (ns: string) => (cmd: string, args: readonly string[] = [], o?: RunOptions) => run('ip', ['netns', 'exec', ns, cmd, ...args], o);

    const fi: FakeInternet = {
      tag,
      hostNs,
      internetNs,
      hostIf,
      internetIf,
      addr: ADDR,
      sites: siteRecord,
      caPem: readFileSync(caPath, 'utf8'),
      caPath,
      dir,
      logPath,
      serverPid,
      inHost: inNs(hostNs),
      inInternet: inNs(internetNs),
      spawnInHost(cmd, args = [], o = {}) {
        const child = spawn('ip', ['netns', 'exec', hostNs, cmd, ...args], o);
        spawned.push(child);
        return child;
      },
      assertConfined: () => assertConfined({ hostNs, internetNs, hostIf, internetIf, allowLink: opts.allowLink }),
      readLog() {
        const text = readFileSync(logPath, 'utf8');
        // The last line may be half-written: only whole lines are entries.
        return text
          .split('\n')
          .slice(0, -1)
          .map((l) => JSON.parse(l) as LogEntry);
      },
      async waitForLog(match: (e: LogEntry) => boolean, timeoutMs = 5000) {
        for (const end = Date.now() + timeoutMs; ; ) {
          const found = fi.readLog().find(match);
          if (found) return found;
          if (Date.now() > end) throw new Error(`no log entry matched in ${timeoutMs} ms`);
          await new Promise((r) => setTimeout(r, 25));
        }
      },
      setName: (name, addresses) => control({ op: 'setName', name, addresses: addresses === null ? null : [addresses].flat() }),
      counts: async () => {
        const v4 = await ipJson<unknown>(['-n', hostNs, 'route', 'show', 'table', 'all']);
        const v6 = await ipJson<unknown>(['-n', hostNs, '-6', 'route', 'show', 'table', 'all']);
        const save = await inNs(hostNs)('iptables-save');
        return {
          namespaces: (await ipJson<unknown>(['netns', 'list'])).length,
          hostLinks: (await ipJson<unknown>(['-n', hostNs, 'link', 'show'])).length,
          hostAddresses: (await ipJson<{ addr_info: unknown[] }>(['-n', hostNs, 'addr', 'show'])).reduce((n, l) => n + l.addr_info.length, 0),
          hostRoutes: v4.length + v6.length,
          hostIptablesRules: save.stdout.split('\n').filter((l) => l.startsWith('-A ')).length,
          hostProcesses: (await nsPids(hostNs)).length,
          internetProcesses: (await nsPids(internetNs)).length,
        };
      },
      remove,
      [Symbol.asyncDispose]: remove,
    };
    return fi;
  } catch (err) {
    // The tag in the message lets a test check that this half-made one left nothing.
    const e = err instanceof Error ? err : new Error(String(err));
    e.message = `fake internet ${tag}: ${e.message}`;
    await remove().catch((c: Error) => {
      e.message += `\n(and cleaning up: ${c.message})`;
    });
    throw e;
  }
}

function siteSpecs(extra: SiteSpec[]): SiteSpec[] {
  const sites: SiteSpec[] = [
    { id: 'a', address: ADDR.siteA, names: ['site-a.test', 'www.site-a.test'] },
    { id: 'b', address: ADDR.siteB, names: ['site-b.test'] },
    ...extra.map((s) => ({ ...s, names: [...s.names] })),
  ];
  const seen = new Set<string>();
  for (const s of sites) {
    // The rule for network tests: only ranges that are never routed on the real internet.
    if (!inTestNet(s.address) || s.address === ADDR.host || s.address === ADDR.gateway || s.address === ADDR.dns) {
      throw new Error(`site ${s.id}: ${s.address} is not a free TEST-NET or 100.64/10 address`);
    }
    if (!/^[a-z0-9-]+$/.test(s.id) || seen.has(s.id) || seen.has(s.address)) throw new Error(`site ${s.id}: id or address repeated or not [a-z0-9-]`);
    seen.add(s.id).add(s.address);
  }
  return sites;
}

function nameMap(sites: SiteSpec[], extra: Record<string, string | string[]>): Record<string, string[]> {
  const names: Record<string, string[]> = {};
  for (const s of sites) for (const n of s.names) names[n.toLowerCase()] = [s.address];
  for (const [n, a] of Object.entries(extra)) names[n.toLowerCase().replace(/\.$/, '')] = [a].flat();
  return names;
}

/** A CA for this run and a certificate per site (EC P-256: fast to make), with the openssl CLI. */
async function makeCertificates(dir: string, sites: SiteSpec[]): Promise<Map<string, { cert: string; key: string }>> {
  // Our own config: the system's openssl.cnf would add v3_ca extensions to every `req -x509`.
  // Extensions as strict verifiers (Python 3.13's VERIFY_X509_STRICT) want them: key usage, key ids.
  const sections = sites.map((s) =>
    [
      `[site_${s.id.replace(/-/g, '_')}]`,
      'basicConstraints = critical,CA:FALSE',
      'keyUsage = critical,digitalSignature',
      'extendedKeyUsage = serverAuth',
      'subjectKeyIdentifier = hash',
      'authorityKeyIdentifier = keyid:always',
      `subjectAltName = ${[...s.names.map((n) => `DNS:${n}`), `IP:${s.address}`].join(',')}`,
    ].join('\n'),
  );
  const cnf = join(dir, 'openssl.cnf');
  writeFileSync(
    cnf,
    ['[req]', 'distinguished_name = dn', '[dn]', '[ca]', 'basicConstraints = critical,CA:TRUE', 'keyUsage = critical,keyCertSign,cRLSign', 'subjectKeyIdentifier = hash', ...sections].join('\n') + '\n',
  );
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '7'];
  const caKey = join(dir, 'ca.key');
  const caPem = join(dir, 'ca.pem');
  await ok('openssl', ['req', '-x509', '-config', cnf, '-extensions', 'ca', ...ec, '-keyout', caKey, '-out', caPem, '-subj', '/CN=cellvm fake internet test CA']);
  const out = new Map<string, { cert: string; key: string }>();
  await Promise.all(
    sites.map(async (s) => {
      const cert = join(dir, `site-${s.id}.pem`);
      const key = join(dir, `site-${s.id}.key`);
      const section = `site_${s.id.replace(/-/g, '_')}`;
      await ok('openssl', ['req', '-x509', '-config', cnf, '-extensions', section, '-CA', caPem, '-CAkey', caKey, ...ec, '-keyout', key, '-out', cert, '-subj', `/CN=${s.names[0] ?? s.address}`]);
      out.set(s.id, { cert, key });
    }),
  );
  return out;
}

/** Wait for the server's ready line; return the control function (a command, then its ack). */
function startServer(child: ChildProcess, timeoutMs: number): Promise<(cmd: Record<string, unknown>) => Promise<void>> {
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
  const lines = createInterface({ input: child.stdout! });
  const acks = new Map<number, () => void>();
  let nextId = 1;
  const control = (cmd: Record<string, unknown>) =>
    new Promise<void>((resolve, reject) => {
      if (child.exitCode !== null || child.signalCode !== null) return reject(new Error('fake internet server has exited'));
      const id = nextId++;
      const timer = setTimeout(() => {
        acks.delete(id);
        reject(new Error(`fake internet server did not ack ${JSON.stringify(cmd)}`));
      }, 5000);
      acks.set(id, () => {
        clearTimeout(timer);
        resolve();
      });
      child.stdin!.write(JSON.stringify({ id, ...cmd }) + '\n');
    });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fake internet server not ready after ${timeoutMs} ms: ${stderr}`)), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`fake internet server exited (${code ?? signal}): ${stderr.trim()}`));
    });
    lines.on('line', (line) => {
      let msg: { ready?: boolean; ack?: number };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        return;
      }
      if (msg.ready) {
        clearTimeout(timer);
        resolve(control);
      } else if (msg.ack !== undefined) acks.get(msg.ack)?.();
    });
  });
}

interface IpLink {
  ifname: string;
  operstate?: string;
  link_netnsid?: number;
  linkinfo?: { info_kind?: string };
}
interface IpRoute {
  dst: string;
  dev?: string;
  gateway?: string;
  type?: string;
  table?: string;
}

/**
 * The host namespace can reach nothing but the fake internet, and the fake internet nothing at all:
 * - host namespace links: lo, our veth (up, its peer in our internet namespace), and only links
 *   `allowLink` accepts;
 * - every host route is on lo, our veth or an accepted link; every default route (any table, v4
 *   and v6) goes through our veth, v4 via the internet's gateway address;
 * - the internet namespace has only lo and its veth end, and no route with a gateway (a dead end);
 * - no link in the root namespace has its peer in either of our namespaces.
 * Call it before sending anything.
 */
async function assertConfined(p: {
  hostNs: string;
  internetNs: string;
  hostIf: string;
  internetIf: string;
  allowLink: ((l: LinkInfo) => boolean) | undefined;
}): Promise<void> {
  const problems: string[] = [];
  const hostLinks = await ipJson<IpLink>(['-n', p.hostNs, '-d', 'link', 'show']);
  const allowed = new Set(['lo', p.hostIf]);
  for (const l of hostLinks) {
    if (allowed.has(l.ifname)) continue;
    const info: LinkInfo = { name: l.ifname, kind: l.linkinfo?.info_kind };
    if (p.allowLink?.(info)) allowed.add(l.ifname);
    else problems.push(`host namespace has link ${l.ifname} (${info.kind ?? 'no kind'}) that is not allowed`);
  }
  const veth = hostLinks.find((l) => l.ifname === p.hostIf);
  if (!veth) problems.push(`host namespace lost its veth ${p.hostIf}`);
  else {
    const ids = await ipJson<{ nsid: number; name?: string }>(['-n', p.hostNs, 'netns', 'list-id']);
    const peerNs = ids.find((i) => i.nsid === veth.link_netnsid)?.name;
    if (peerNs !== p.internetNs) problems.push(`veth ${p.hostIf}'s peer is in ${peerNs ?? `nsid ${veth.link_netnsid}`}, not ${p.internetNs}`);
  }
  for (const family of ['-4', '-6']) {
    const routes = await ipJson<IpRoute>(['-n', p.hostNs, family, 'route', 'show', 'table', 'all']);
    for (const r of routes) {
      const what = `host ${family} route ${r.dst} dev ${r.dev ?? '-'}${r.gateway ? ` via ${r.gateway}` : ''} table ${r.table ?? 'main'}`;
      if (!r.dev || !allowed.has(r.dev)) {
        if (r.type !== 'unreachable' && r.type !== 'blackhole' && r.type !== 'prohibit') problems.push(`${what}: not on an allowed link`);
      } else if (r.dst === 'default' && (r.dev !== p.hostIf || (family === '-4' && r.gateway !== ADDR.gateway))) {
        problems.push(`${what}: a default route not via the fake internet`);
      }
    }
  }
  const inetLinks = await ipJson<IpLink>(['-n', p.internetNs, 'link', 'show']);
  for (const l of inetLinks) if (l.ifname !== 'lo' && l.ifname !== p.internetIf) problems.push(`internet namespace has link ${l.ifname}`);
  for (const family of ['-4', '-6']) {
    for (const r of await ipJson<IpRoute>(['-n', p.internetNs, family, 'route', 'show', 'table', 'all'])) {
      if (r.gateway || r.dst === 'default') problems.push(`internet ${family} route ${r.dst} via ${r.gateway ?? '-'}: the internet must be a dead end`);
    }
  }
  // The root namespace's ids for our namespaces; a root link whose peer has one of them is a way in or out.
  const rootIds = await ipJson<{ nsid: number; name?: string }>(['netns', 'list-id']);
  const ours = new Set(rootIds.filter((i) => i.name === p.hostNs || i.name === p.internetNs).map((i) => i.nsid));
  for (const l of await ipJson<IpLink>(['link', 'show'])) {
    if (l.link_netnsid !== undefined && ours.has(l.link_netnsid)) problems.push(`root namespace link ${l.ifname} has its peer in our namespaces`);
  }
  if (problems.length) throw new Error(`fake internet is not confined:\n${problems.join('\n')}`);
}
