import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { addedSince, ADDR, createFakeInternet, systemState, type FakeInternet, type LogEntry, type SystemState } from '../helpers/fake-internet.js';
import { encodeQuery, parseAnswer, RCODE, TYPE } from '../../src/network/dns-wire.js';

// The fake internet the network tests stand on (no VM here): everything is sent from the host
// namespace it makes, after assertConfined, to servers in its internet namespace.

/** Run a small ES module with node inside the host namespace; its stdout is JSON. */
async function nodeInHost(fi: FakeInternet, code: string, ...args: string[]): Promise<unknown> {
  const r = await fi.inHost(process.execPath, ['--input-type=module', '-e', code, ...args], { timeoutMs: 20_000 });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as unknown;
}

// Sends every hex packet over UDP at once, then collects replies until one answers the last
// packet (the server takes them in order, so the earlier ones' replies came first) or 3 s pass;
// then, if asked, one query over TCP.
const DNS_EXCHANGE = `
import dgram from 'node:dgram';
import net from 'node:net';
const [address, tcpHex, ...packets] = process.argv.slice(1);
const sock = dgram.createSocket('udp4');
const lastId = Buffer.from(packets.at(-1), 'hex').readUInt16BE(0);
const replies = await new Promise((resolve) => {
  const got = [];
  const t = setTimeout(() => resolve(got), 3000);
  sock.on('message', (msg) => {
    got.push(msg.toString('hex'));
    if (msg.length >= 2 && msg.readUInt16BE(0) === lastId) { clearTimeout(t); resolve(got); }
  });
  for (const hex of packets) sock.send(Buffer.from(hex, 'hex'), 53, address);
});
sock.close();
// TCP: every message framed on one connection; framed replies until the last message's.
let tcp = null;
if (tcpHex) {
  tcp = await new Promise((resolve, reject) => {
    const qs = tcpHex.split(',').map((h) => Buffer.from(h, 'hex'));
    const lastTcpId = qs.at(-1).readUInt16BE(0);
    const framed = qs.map((q) => { const len = Buffer.alloc(2); len.writeUInt16BE(q.length); return Buffer.concat([len, q]); });
    const s = net.connect(53, address, () => s.write(Buffer.concat(framed)));
    let got = Buffer.alloc(0);
    const out = [];
    s.setTimeout(3000, () => { s.destroy(); reject(new Error('tcp timeout')); });
    s.on('data', (c) => {
      got = Buffer.concat([got, c]);
      while (got.length >= 2 && got.length >= 2 + got.readUInt16BE(0)) {
        const msg = got.subarray(2, 2 + got.readUInt16BE(0));
        got = got.subarray(2 + msg.length);
        out.push(msg.toString('hex'));
        if (msg.readUInt16BE(0) === lastTcpId) { s.end(); resolve(out); }
      }
    });
    s.on('error', reject);
  });
}
console.log(JSON.stringify({ replies, tcp }));
`;

async function dnsExchange(fi: FakeInternet, packets: Buffer[], tcp: Buffer[] = []) {
  const tcpArg = tcp.map((p) => p.toString('hex')).join(',');
  const out = (await nodeInHost(fi, DNS_EXCHANGE, ADDR.dns, tcpArg, ...packets.map((p) => p.toString('hex')))) as {
    replies: string[];
    tcp: string[] | null;
  };
  return { replies: out.replies.map((h) => Buffer.from(h, 'hex')), tcp: (out.tcp ?? []).map((h) => Buffer.from(h, 'hex')) };
}

const ours = (tag: string, s: SystemState) => ({
  namespaces: s.namespaces.filter((n) => n.includes(tag)),
  rootLinks: s.rootLinks.filter((n) => n.includes(tag)),
  etcNetns: s.etcNetns.filter((n) => n.includes(tag)),
  tempDirs: s.tempDirs.filter((n) => n.includes(tag)),
});

let fi: FakeInternet | undefined;
let initial: SystemState;

after(async () => {
  await fi?.remove();
});

describe('fake internet', () => {
  before(async () => {
    initial = await systemState();
    fi = await createFakeInternet({ names: { 'extra.test': ADDR.siteB, 'multi.test': [ADDR.siteA, ADDR.siteB] } });
  });

  test('the host namespace is confined to it, and the real host cannot reach it', async () => {
    const f = fi!;
    await f.assertConfined();
    const route = JSON.parse(execFileSync('ip', ['-j', '-n', f.hostNs, 'route', 'get', '203.0.113.99'], { encoding: 'utf8' })) as { dev: string; gateway: string }[];
    assert.deepEqual([route[0]?.dev, route[0]?.gateway], [f.hostIf, ADDR.gateway], 'anything the host namespace sends goes to the fake internet');
    // The internet is a dead end: it has no route beyond the link and its own addresses.
    const lookup = await f.inInternet('ip', ['route', 'get', '203.0.113.99']);
    assert.notEqual(lookup.code, 0);
    assert.match(lookup.stderr, /unreachable/i);

    // From the root namespace nothing of ours is local or directly attached: a packet there for a
    // fake-internet address would follow the machine's own routes, never into our namespaces.
    // (Checked by route lookups only: sending it would put it on the real network.)
    const rootLinks = (JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { ifname: string }[]).map((l) => l.ifname);
    assert.ok(!rootLinks.some((l) => l.includes(f.tag)), 'no link of ours in the root namespace');
    for (const address of [ADDR.siteA, ADDR.siteB, ADDR.dns, ADDR.gateway]) {
      const r = JSON.parse(execFileSync('ip', ['-j', 'route', 'get', address], { encoding: 'utf8' })) as { dev?: string; type?: string; prefsrc?: string }[];
      assert.notEqual(r[0]?.type, 'local', `${address} is not an address of the real host`);
      assert.ok(!String(r[0]?.dev).includes(f.tag), `${address} is not routed into our namespaces`);
    }

    // The check has teeth: a stray link, then a default route through it, are refused.
    // (A bridge: this host's kernel has no dummy module.)
    assert.equal((await f.inHost('ip', ['link', 'add', 'stray0', 'type', 'bridge'])).code, 0);
    try {
      await assert.rejects(f.assertConfined(), /link stray0 \(bridge\) that is not allowed/);
      assert.equal((await f.inHost('ip', ['link', 'set', 'stray0', 'up'])).code, 0);
      assert.equal((await f.inHost('ip', ['route', 'add', 'default', 'dev', 'stray0', 'table', '100'])).code, 0);
      await assert.rejects(f.assertConfined(), /route default dev stray0 table 100: not on an allowed link/);
    } finally {
      await f.inHost('ip', ['link', 'del', 'stray0']);
    }
    await f.assertConfined();
  });

  test('HTTP and HTTPS by SNI from the host namespace, seen with its address', async () => {
    const f = fi!;
    await f.assertConfined();
    const curl = async (...args: string[]) => {
      const r = await f.inHost('curl', ['-sS', '--max-time', '5', ...args]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout;
    };
    const plain = JSON.parse(await curl('-H', 'Host: site-a.test', `http://${ADDR.siteA}/hello?x=1`)) as Record<string, unknown> & { client: { address: string; port: number } };
    assert.deepEqual({ ...plain, client: plain.client.address }, {
      site: 'a',
      scheme: 'http',
      local: ADDR.siteA,
      method: 'GET',
      path: '/hello?x=1',
      host: 'site-a.test',
      sni: null,
      client: ADDR.host,
    });

    const resolve = (name: string, address: string) => ['--resolve', `${name}:443:${address}`];
    const tls = JSON.parse(await curl('--cacert', f.caPath, ...resolve('site-a.test', ADDR.siteA), 'https://site-a.test/secure')) as Record<string, unknown>;
    assert.deepEqual([tls.site, tls.scheme, tls.sni, tls.host, tls.path], ['a', 'https', 'site-a.test', 'site-a.test', '/secure']);
    // SNI picks the certificate, whatever the address: site A's address serving site-b.test.
    const cross = JSON.parse(await curl('--cacert', f.caPath, ...resolve('site-b.test', ADDR.siteA), 'https://site-b.test/')) as Record<string, unknown>;
    assert.deepEqual([cross.site, cross.sni], ['a', 'site-b.test']);
    // A name the test mapped to site B is in site B's certificate.
    const extra = JSON.parse(await curl('--cacert', f.caPath, ...resolve('extra.test', ADDR.siteB), 'https://extra.test/')) as Record<string, unknown>;
    assert.deepEqual([extra.site, extra.sni], ['b', 'extra.test']);
    // The certificates really are checked: without the test CA, or for a name not in them, curl refuses.
    const untrusted = await f.inHost('curl', ['-sS', '--max-time', '5', ...resolve('site-a.test', ADDR.siteA), 'https://site-a.test/']);
    assert.equal(untrusted.code, 60, untrusted.stderr);
    const wrongName = await f.inHost('curl', ['-sS', '--max-time', '5', '--cacert', f.caPath, ...resolve('other.test', ADDR.siteA), 'https://other.test/']);
    assert.equal(wrongName.code, 60, wrongName.stderr);
    // The CA PEM handed to tests is the file's.
    assert.match(f.caPem, /^-----BEGIN CERTIFICATE-----/);

    // Bulk both ways: /bytes streams n bytes, /sink counts an upload.
    assert.equal(await curl('-o', '/dev/null', '-w', '%{size_download}', `http://${ADDR.siteB}/bytes?n=3000000`), '3000000');
    const upload = join(f.dir, 'upload.bin');
    writeFileSync(upload, Buffer.alloc(1_500_001, 7));
    const sink = JSON.parse(await curl('--data-binary', `@${upload}`, `http://${ADDR.siteA}/sink`)) as { bytes: number };
    assert.equal(sink.bytes, 1_500_001);

    const http = f.readLog().filter((e): e is Extract<LogEntry, { kind: 'http' }> => e.kind === 'http');
    assert.deepEqual(
      http.map((e) => [e.site, e.scheme, e.path, e.sni, e.client.address]),
      [
        ['a', 'http', '/hello?x=1', null, ADDR.host],
        ['a', 'https', '/secure', 'site-a.test', ADDR.host],
        ['a', 'https', '/', 'site-b.test', ADDR.host],
        ['b', 'https', '/', 'extra.test', ADDR.host],
        ['b', 'http', '/bytes?n=3000000', null, ADDR.host],
        ['a', 'http', '/sink', null, ADDR.host],
      ],
    );
    assert.equal(http[0]!.client.port, plain.client.port, 'the log has the source port the reply reported');
    assert.deepEqual([http[4]!.bytes, http[5]!.bytes], [3_000_000, 1_500_001]);
    // The two refused handshakes reached the internet as connections, never as requests: curl
    // refuses an unknown CA inside the handshake (the server logs the alert, maybe after curl has
    // exited) and a wrong name after it.
    const refused = await f.waitForLog((e) => e.kind === 'tls-error');
    assert.deepEqual([refused.kind === 'tls-error' && refused.sni, refused.client.address], ['site-a.test', ADDR.host]);
    assert.ok(f.readLog().some((e) => e.kind === 'tls' && e.sni === 'other.test'));
    assert.equal(f.readLog().filter((e) => e.kind === 'connect' && e.scheme === 'https').length, 5);
  });

  test('DNS answers from its map, NXDOMAIN otherwise, and logs every query', async () => {
    const f = fi!;
    await f.assertConfined();
    const RESOLVE = `
      import { promises as dns } from 'node:dns';
      const r = new dns.Resolver({ timeout: 2000, tries: 1 });
      r.setServers([process.argv[1]]);
      const out = {};
      for (const name of process.argv.slice(2)) {
        try { out[name] = (await r.resolve4(name)).sort(); } catch (err) { out[name] = err.code; }
      }
      console.log(JSON.stringify(out));
    `;
    assert.deepEqual(await nodeInHost(f, RESOLVE, ADDR.dns, 'site-a.test', 'WWW.Site-A.test', 'site-b.test', 'extra.test', 'multi.test', 'nope.test'), {
      'site-a.test': [ADDR.siteA],
      'WWW.Site-A.test': [ADDR.siteA],
      'site-b.test': [ADDR.siteB],
      'extra.test': [ADDR.siteB],
      'multi.test': [ADDR.siteA, ADDR.siteB],
      'nope.test': 'ENOTFOUND',
    });
    // The host namespace's resolv.conf names the fake DNS: the system resolver (glibc) uses it too.
    const getent = await f.inHost('getent', ['ahostsv4', 'site-b.test']);
    assert.equal(getent.code, 0, getent.stderr);
    assert.match(getent.stdout, new RegExp(`^${ADDR.siteB.replace(/\./g, '\\.')}\\s`));

    // Names can change while it runs (DNS rebinding tests), and go away.
    await f.setName('late.test', ADDR.siteA);
    assert.deepEqual(await nodeInHost(f, RESOLVE, ADDR.dns, 'late.test'), { 'late.test': [ADDR.siteA] });
    await f.setName('late.test', null);
    assert.deepEqual(await nodeInHost(f, RESOLVE, ADDR.dns, 'late.test'), { 'late.test': 'ENOTFOUND' });

    const dns = f.readLog().filter((e): e is Extract<LogEntry, { kind: 'dns' }> => e.kind === 'dns');
    const asked = dns.filter((e) => e.type === TYPE.A).map((e) => [e.name, e.rcode]);
    for (const expected of [
      ['site-a.test', RCODE.NOERROR],
      ['www.site-a.test', RCODE.NOERROR],
      ['nope.test', RCODE.NXDOMAIN],
      ['site-b.test', RCODE.NOERROR],
      ['late.test', RCODE.NOERROR],
      ['late.test', RCODE.NXDOMAIN],
    ]) {
      assert.ok(asked.some((a) => a[0] === expected[0] && a[1] === expected[1]), `query ${expected.join(' ')} logged`);
    }
    assert.ok(dns.every((e) => e.client.address === ADDR.host && e.proto === 'udp'));
    // A name nobody asked for is absent: what "a query for a denied name never reached the internet" will check.
    assert.ok(!dns.some((e) => e.name === 'never-asked.test'));
  });

  test('malformed DNS packets get FORMERR or silence, and the server goes on answering (UDP and TCP)', async () => {
    const f = fi!;
    await f.assertConfined();
    const valid = encodeQuery(0x1234, 'site-a.test');
    const header = (id: number, flags: number, qd: number) => {
      const b = Buffer.alloc(12);
      b.writeUInt16BE(id, 0);
      b.writeUInt16BE(flags, 2);
      b.writeUInt16BE(qd, 4);
      return b;
    };
    const bad = [
      Buffer.alloc(0), // nothing at all
      Buffer.from([1, 2, 3]), // shorter than a header
      header(0x0101, 0x0100, 1), // a question promised, none there
      Buffer.concat([header(0x0102, 0x0100, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]), // a pointer to itself
      Buffer.concat([header(0x0103, 0x0100, 1), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0, 0, 1, 0, 1])]), // 64-byte label
      Buffer.concat([header(0x0104, 0x0100, 1), Buffer.from([50, 0x61])]), // label past the end
      Buffer.concat([header(0x0105, 0x0100, 1), Buffer.from([...Array(130).fill([1, 0x61]).flat(), 0, 0, 1, 0, 1])]), // name > 255 bytes
      Buffer.concat([header(0x0106, 0x0100, 2), valid.subarray(12)]), // two questions
      Buffer.concat([header(0x0107, 0x8100, 1), valid.subarray(12)]), // a response: never answered
      encodeQuery(0x0108, 'site-a.test').fill(0xff, 12), // garbage after the header
    ];
    // Over TCP, on one connection: a malformed message, one that is no query, then a good one.
    const overTcp = [bad[2]!, bad[8]!, encodeQuery(0x4321, 'www.site-a.test')];
    const { replies, tcp } = await dnsExchange(f, [...bad, valid], overTcp);
    // FORMERR for what has a header, silence for the rest (too short to answer, or a response).
    const answers = replies.map(parseAnswer);
    assert.deepEqual(
      answers.map((a) => [a.id, a.rcode]),
      [0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0106, 0x0108].map((id) => [id, RCODE.FORMERR]).concat([[0x1234, RCODE.NOERROR]]),
    );
    const last = answers.at(-1)!;
    assert.deepEqual([last.addresses, last.authoritative, last.question?.name], [[ADDR.siteA], true, 'site-a.test']);
    const tcpAnswers = tcp.map(parseAnswer);
    assert.deepEqual(tcpAnswers.map((a) => [a.id, a.rcode]), [[0x0101, RCODE.FORMERR], [0x4321, RCODE.NOERROR]]);
    assert.deepEqual([tcpAnswers[1]!.addresses, tcpAnswers[1]!.question?.name], [[ADDR.siteA], 'www.site-a.test']);
    assert.ok(f.readLog().some((e) => e.kind === 'dns' && e.proto === 'tcp' && e.name === 'www.site-a.test'));
    const malformed = f.readLog().filter((e) => e.kind === 'dns-malformed');
    assert.equal(malformed.length, bad.length + 2);
    const alive = execFileSync('ps', ['-o', 'stat=', '-p', String(f.serverPid)], { encoding: 'utf8' }).trim();
    assert.match(alive, /^[SR]/, 'the server still runs');
  });

  test('UDP echo on port 7 of site A', async () => {
    const f = fi!;
    await f.assertConfined();
    const ECHO = `
      import dgram from 'node:dgram';
      const s = dgram.createSocket('udp4');
      const reply = await new Promise((resolve) => {
        const t = setTimeout(() => resolve(null), 2000);
        s.on('message', (m, r) => { clearTimeout(t); resolve({ text: m.toString(), from: r.address, port: r.port }); });
        s.send(Buffer.from('ping through the fake internet'), 7, process.argv[1]);
      });
      s.close();
      console.log(JSON.stringify(reply));
    `;
    assert.deepEqual(await nodeInHost(f, ECHO, ADDR.siteA), { text: 'ping through the fake internet', from: ADDR.siteA, port: 7 });
    const echo = f.readLog().filter((e) => e.kind === 'udp-echo');
    assert.deepEqual(echo.map((e) => [e.client.address, e.bytes]), [[ADDR.host, 30]]);
  });
});

test('remove() ends every process and leaves nothing behind; a half-made one cleans up itself', async () => {
  const f = fi!;
  const sleeper = f.spawnInHost('sleep', ['300'], { stdio: 'ignore' });
  // 'spawn' comes when `ip` has started, maybe before it has entered the namespace: wait for that.
  let counts = await f.counts();
  for (let i = 0; i < 100 && counts.hostProcesses === 0; i++) {
    await new Promise((r) => setTimeout(r, 20));
    counts = await f.counts();
  }
  assert.deepEqual([counts.hostLinks, counts.hostProcesses, counts.internetProcesses, counts.hostIptablesRules], [2, 1, 1, 0]);

  // What exists while it lives is found by the leak check (it would see a leak).
  const live = ours(f.tag, await systemState());
  assert.deepEqual(live.namespaces, [f.hostNs, f.internetNs].sort());
  assert.equal(live.rootLinks.length, 0, 'nothing of ours in the root namespace, ever');
  assert.deepEqual(live.etcNetns, [f.hostNs]);
  assert.equal(live.tempDirs.length, 1);
  assert.ok(addedSince(initial, await systemState()).servers?.includes(f.serverPid));

  await f.remove();
  await f.remove(); // idempotent
  const after = await systemState();
  assert.deepEqual(ours(f.tag, after), { namespaces: [], rootLinks: [], etcNetns: [], tempDirs: [] });
  assert.ok(!after.servers.includes(f.serverPid), 'server ended');
  if (sleeper.exitCode === null && sleeper.signalCode === null) await once(sleeper, 'exit');
  assert.equal(sleeper.signalCode, 'SIGTERM', 'the process it started in the host namespace was ended');

  // Creation failing half-way (here: the servers never report ready in time) removes what it made.
  const before = await systemState();
  const err = await createFakeInternet({ startTimeoutMs: 1 }).then(
    () => assert.fail('should not be ready in 1 ms'),
    (e: Error) => e,
  );
  assert.match(err.message, /^fake internet ([0-9a-f]{8}): .*not ready/);
  const tag = /^fake internet ([0-9a-f]{8})/.exec(err.message)![1]!;
  const left = await systemState();
  assert.deepEqual(ours(tag, left), { namespaces: [], rootLinks: [], etcNetns: [], tempDirs: [] });
  assert.deepEqual(addedSince(before, left).servers ?? [], []);
});
