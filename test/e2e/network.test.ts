/**
 * Networking on real QEMU and real kernel networking, confined: celld runs inside the host
 * namespace of a fake internet (test/helpers/fake-internet.ts), whose only way out is a veth into
 * the internet namespace with its HTTP, DNS and echo servers. Nothing is sent anywhere else.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { CellClient, Sandbox } from '../../src/sdk/index.js';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ADDR, createFakeInternet, type FakeInternet } from '../helpers/fake-internet.js';
import { alive, REPO, TestHome, waitFor } from '../helpers/cell-home.js';
import { holdConnection } from '../helpers/held-connection.js';
import { listNamespaces } from '../../src/network/vm-namespace.js';

interface VmJson {
  id: string;
  name: string;
  state: string;
  network: { networks: { name: string; address: string }[]; ports: { hostIp: string; hostPort: number; guestPort: number; protocol: string }[]; egressDenied: number; droppedPackets?: number } | null;
}

describe('networking', () => {
  let net: FakeInternet;
  let h: TestHome;
  let celldPid = 0;
  let homeTag = '';

  /** celld in the fake internet's host namespace (nsenter: its files and sockets stay where the tests see them). */
  const startCelld = async () => {
    // A dead celld leaves its socket behind: the new one's appears once it has reconciled and listens.
    rmSync(join(h.home, 'celld.sock'), { force: true });
    const log = openSync(join(h.home, 'celld.log'), 'a', 0o600);
    const child = spawn('nsenter', [`--net=/run/netns/${net.hostNs}`, '--', process.execPath, join(REPO, 'bin/celld')], {
      env: h.env,
      detached: true,
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    child.unref();
    celldPid = child.pid!;
    assert.ok(await waitFor(() => existsSync(join(h.home, 'celld.sock')), 30_000), 'celld came up');
  };

  const vm = async (name: string) => ((JSON.parse((await h.ok(['inspect', name])).stdout) as VmJson[])[0]!);
  const inGuest = async (name: string, script: string) => (await h.cell(['exec', name, '--', 'sh', '-c', script], { timeoutMs: 60_000 }));
  const ours = async () => (await listNamespaces()).filter((n) => n.startsWith(`cell-${homeTag}-`));

  before(async () => {
    net = await createFakeInternet({ allowLink: (l) => l.kind === 'bridge' || l.kind === 'veth' || l.kind === 'tun' });
    await net.assertConfined();
    h = new TestHome({ CELL_NETWORK: 'on', CELL_DNS_SERVERS: ADDR.dns });
    homeTag = createHash('sha256').update(h.home).digest('hex').slice(0, 6);
    await startCelld();
  });

  after(async () => {
    await h?.cleanup();
    if (celldPid && alive(celldPid)) process.kill(celldPid, 'SIGKILL');
    await net?.remove();
  });

  test('a VM is online: DNS by name and outbound TCP through NAT, a published port serves from the host, the host and link-local are out of reach; --network none has no NIC', async () => {
    await h.ok(['run', '-d', '--name', 'web', '-p', '8080:80', '-p', '0.0.0.0:8081:80', 'busybox', '--', 'sh', '-c', 'mkdir -p /www && echo hello from the guest > /www/index.html && exec httpd -f -p 80 -h /www']);
    await net.assertConfined();
    const web = await vm('web');
    assert.deepEqual(web.network!.networks.map((n) => n.name), ['default']);
    assert.match(web.network!.networks[0]!.address, /^10\.89\.\d+\.\d+$/);
    assert.deepEqual(
      web.network!.ports.map((p) => `${p.hostIp}:${p.hostPort}->${p.guestPort}/${p.protocol}`),
      ['127.0.0.1:8080->80/tcp', '0.0.0.0:8081->80/tcp'],
    );
    assert.equal((await h.ok(['port', 'web', '80'])).stdout, '127.0.0.1:8080\n0.0.0.0:8081\n');

    // By name: the guest's resolver is its gateway, celld relays to the fake DNS. (busybox's
    // nslookup has a resolver of its own; the built-in image has no NSS modules for static glibc's
    // getaddrinfo, so its wget is given addresses. Debian's busybox wget crashes on -T: timeout(1).)
    const lookup = await inGuest('web', 'nslookup site-a.test');
    assert.match(lookup.stdout, new RegExp(`Address:\\s+${ADDR.siteA.replace(/\./g, '\\.')}`), lookup.stdout + lookup.stderr);
    // Outbound TCP: the site sees the host namespace's address (NAT).
    const fetched = await inGuest('web', `timeout 10 wget -q -O- --header 'Host: site-a.test' http://${ADDR.siteA}/hello`);
    assert.equal(fetched.code, 0, fetched.stderr);
    const seen = JSON.parse(fetched.stdout) as { site: string; host: string; client: { address: string } };
    assert.equal(seen.site, 'a');
    assert.equal(seen.host, 'site-a.test');
    assert.equal(seen.client.address, ADDR.host, 'masqueraded to the host namespace');
    assert.ok(net.readLog().some((e) => e.kind === 'dns' && (e as { name?: string }).name === 'site-a.test'), 'the query reached the fake DNS');

    // The published port, from the host (celld's namespace), reaches the guest's httpd.
    const served = await net.inHost('curl', ['-s', '--max-time', '10', 'http://127.0.0.1:8080/']);
    assert.equal(served.stdout, 'hello from the guest\n', served.stderr);

    // Not the host itself (its published port on 0.0.0.0 included), not link-local, not private ranges.
    for (const target of ['http://10.89.0.1:8081/', `http://${ADDR.host}:8081/`, 'http://169.254.169.254/', 'http://192.168.1.1/']) {
      const r = await inGuest('web', `timeout 3 wget -q -O- ${target}`);
      assert.notEqual(r.code, 0, `${target} must be out of reach, got: ${r.stdout}`);
    }
    // A guest that takes another source address gets nowhere with it (only its own address leaves its namespace).
    const connects = () => net.readLog().filter((e) => e.kind === 'connect').length;
    const connectsBefore = connects();
    await inGuest('web', `ip addr add 172.30.255.3/30 dev eth0; echo x | timeout 4 nc -s 172.30.255.3 -w 2 ${ADDR.siteA} 80; true`);
    assert.equal(connects(), connectsBefore, 'nothing from a spoofed source reached the internet');

    await h.ok(['run', '-d', '--name', 'offline', '--network', 'none', 'busybox']);
    assert.equal((await inGuest('offline', 'ls /sys/class/net')).stdout.trim(), 'lo');
    assert.equal((await vm('offline')).network, null);
    await h.ok(['rm', '-f', 'offline']);
  });

  test('forks of a networked snapshot get addresses of their own, keep serving, reach out; removing them leaves no namespace', async () => {
    // A connection open in the snapshot: the source (same namespace, same NAT state) keeps it; a fork's
    // namespace is new, so its copy is reset, not left half-alive.
    const held = await holdConnection(h, net, 'web');
    await h.ok(['snapshot', '--name', 'served', 'web']);
    await h.ok(['fork', '--count', '2', '--name', 'kid', 'served']);
    await held.assertAfterwards(['web'], ['kid-1', 'kid-2']);
    const kids = await Promise.all(['kid-1', 'kid-2'].map(vm));
    const addresses = new Set([(await vm('web')).network!.networks[0]!.address, ...kids.map((k) => k.network!.networks[0]!.address)]);
    assert.equal(addresses.size, 3, `distinct addresses: ${[...addresses].join(', ')}`);
    for (const kid of kids) {
      const port = kid.network!.ports.find((p) => p.guestPort === 80)!;
      assert.notEqual(port.hostPort, 8080, 'a fork does not take its source port');
      const served = await net.inHost('curl', ['-s', '--max-time', '10', `http://127.0.0.1:${port.hostPort}/`]);
      assert.equal(served.stdout, 'hello from the guest\n', `${kid.name} serves on its own port`);
      const out = await inGuest(kid.name, `timeout 10 wget -q -O- http://${ADDR.siteB}/`);
      assert.equal((JSON.parse(out.stdout) as { site: string }).site, 'b', `${kid.name} reaches out`);
    }
    // The source serves on after its snapshot.
    assert.equal((await net.inHost('curl', ['-s', '--max-time', '10', 'http://127.0.0.1:8080/'])).stdout, 'hello from the guest\n');

    // kill -9 of celld: VMs run on; the next celld serves their ports again.
    process.kill(celldPid, 'SIGKILL');
    await waitFor(() => !alive(celldPid), 5000);
    await startCelld();
    assert.equal((await net.inHost('curl', ['-s', '--max-time', '10', 'http://127.0.0.1:8080/'])).stdout, 'hello from the guest\n', 'served again after a restart');

    assert.ok((await ours()).length >= 3, 'a namespace per running VM');
    const ids = (await h.ok(['ps', '-a', '-q'])).stdout.split('\n').filter(Boolean);
    await h.ok(['rm', '-f', ...ids]);
    await h.ok(['snapshot', 'rm', 'served']); // its spares go with it
    assert.deepEqual(await ours(), [], 'no namespace left once the VMs are gone (spares included)');
  });

  test('egress rules hold on the host: DNS, HTTP Host and CIDR rules, whatever address the guest aims at; denials are counted', async () => {
    await h.ok(['run', '-d', '--name', 'fenced', '--egress', 'allow=site-a.test', 'busybox']);
    await h.ok(['run', '-d', '--name', 'nob', '--egress', `deny=${ADDR.siteB}`, 'busybox']);
    // DNS: an allowed name resolves; a denied one is NXDOMAIN from celld and never reaches the internet.
    assert.match((await inGuest('fenced', 'nslookup site-a.test')).stdout, new RegExp(ADDR.siteA.replace(/\./g, '\\.')));
    const asked = () => net.readLog().filter((e) => e.kind === 'dns' && (e as { name: string }).name === 'site-b.test').length;
    const askedBefore = asked();
    const denied = await inGuest('fenced', 'nslookup site-b.test');
    assert.doesNotMatch(denied.stdout, new RegExp(ADDR.siteB.replace(/\./g, '\\.')), denied.stdout);
    assert.equal(asked(), askedBefore, 'the denied name was not asked upstream');
    // Nor does a resolver of the guest's own choosing help: DNS to the internet is not allowed.
    await inGuest('fenced', `echo nameserver ${ADDR.dns} > /etc/resolv.conf; timeout 5 nslookup site-b.test ${ADDR.dns}; true`);
    assert.equal(asked(), askedBefore, 'a direct DNS question did not reach the internet either');
    // HTTP: the name asked for decides, and celld connects to where that name resolves, not where the guest aimed.
    const viaName = await inGuest('fenced', `timeout 10 wget -q -O- --header 'Host: site-a.test' http://${ADDR.siteB}/`);
    assert.equal((JSON.parse(viaName.stdout) as { site: string }).site, 'a', viaName.stderr);
    assert.notEqual((await inGuest('fenced', `timeout 5 wget -q -O- --header 'Host: site-b.test' http://${ADDR.siteA}/`)).code, 0, 'a denied name, even at an allowed address');
    assert.notEqual((await inGuest('fenced', `timeout 5 wget -q -O- http://${ADDR.siteA}/`)).code, 0, 'no name at all (a raw address as Host)');
    // Anything else is denied with an allow list: UDP to the echo server gets no answer.
    const echoes = () => net.readLog().filter((e) => e.kind === 'udp-echo').length;
    const echoed = echoes();
    await inGuest('fenced', `echo hello | timeout 3 nc -u -w 2 ${ADDR.siteA} 7`);
    assert.equal(echoes(), echoed, 'no datagram reached the internet');
    assert.ok((await vm('fenced')).network!.egressDenied >= 3, `denials counted: ${(await vm('fenced')).network!.egressDenied}`);

    // A guest that takes another MAC and rewrites its routes gains nothing: the rules are on the host side.
    await inGuest('fenced', 'ip link set eth0 down; ip link set eth0 address 52:54:00:12:34:56; ip link set eth0 up; ip route replace default via 172.30.255.1 dev eth0; ip route add 198.51.100.0/24 via 172.30.255.1 dev eth0; true');
    assert.match((await inGuest('fenced', 'cat /sys/class/net/eth0/address')).stdout, /52:54:00:12:34:56/);
    const direct = () => net.readLog().filter((e) => e.kind === 'connect' && (e as { site?: string }).site === 'b').length;
    const directBefore = direct();
    assert.notEqual((await inGuest('fenced', `timeout 5 wget -q -O- --header 'Host: site-b.test' http://${ADDR.siteB}/`)).code, 0, 'still denied with a new MAC and routes');
    assert.equal(direct(), directBefore, 'site B saw no connection');
    assert.equal((JSON.parse((await inGuest('fenced', `timeout 10 wget -q -O- --header 'Host: site-a.test' http://${ADDR.siteA}/`)).stdout) as { site: string }).site, 'a', 'and still allowed where allowed');
    // Packets its namespace's rules dropped (the datagram above) are counted too.
    assert.ok(((await vm('fenced')).network!.droppedPackets ?? 0) >= 1, 'the dropped datagram is counted');
    // A CIDR deny: that address is out of reach, the rest is not; its dropped packets are counted.
    const droppedBefore = (await vm('nob')).network!.droppedPackets ?? 0;
    assert.notEqual((await inGuest('nob', `timeout 5 wget -q -O- http://${ADDR.siteB}/`)).code, 0);
    assert.ok(((await vm('nob')).network!.droppedPackets ?? 0) > droppedBefore, 'the denied connection attempt is counted');
    assert.equal((JSON.parse((await inGuest('nob', `timeout 10 wget -q -O- http://${ADDR.siteA}/`)).stdout) as { site: string }).site, 'a');
    await h.ok(['rm', '-f', 'fenced', 'nob']);
  });

  test("a template's service ports: every VM of it, warm or cold, serves on a free host port of its own (cell port, the SDK's getHost)", async () => {
    const dir = mkdtempSync(join(h.home, 'tpl-'));
    writeFileSync(
      join(dir, 'web.toml'),
      `template_id = "site"
[build]
base = "busybox"
[[build.step]]
run = "mkdir -p /www && echo from the template > /www/index.html"
[service]
start = "httpd -f -p 80 -h /www"
ready = "wget -q -O /dev/null http://127.0.0.1:80/"
ports = [80]
[[variants]]
role = "web"
vcpus = 1
mem_mib = 256
`,
    );
    await h.ok(['template', 'build', '--snapshot', join(dir, 'web.toml')], { timeoutMs: 300_000 });
    await h.ok(['run', '-d', '--name', 'warm-1', '--template', 'site-web']);
    await h.ok(['run', '-d', '--name', 'warm-2', '--template', 'site-web']);
    const client = await CellClient.connect({ home: h.home, autoStart: false });
    const hosts = await Promise.all(['warm-1', 'warm-2'].map(async (name) => {
      const sandbox = await Sandbox.connect(name, { client });
      return sandbox.getHost(80);
    }));
    client.close();
    assert.equal(new Set(hosts).size, 2, `ports of their own: ${hosts.join(', ')}`);
    for (const host of hosts) {
      assert.equal((await net.inHost('curl', ['-s', '--max-time', '10', `http://${host}/`])).stdout, 'from the template\n', host);
    }
    await h.ok(['rm', '-f', 'warm-1', 'warm-2']);
    await h.ok(['template', 'rm', 'site-web']); // its warm snapshot's spare (and namespace) go with it
  });

  test("a build file's ports: every VM forked from the result serves its detached server on a free host port of its own", async () => {
    const dir = mkdtempSync(join(h.home, 'build-'));
    writeFileSync(
      join(dir, 'build.toml'),
      `base = "busybox"
ports = [80, "5353/udp"]
[[step]]
run = "mkdir -p /www && echo from the build > /www/index.html && httpd -p 80 -h /www"
detach = true
ready = "wget -q -O /dev/null http://127.0.0.1:80/"
`,
    );
    await h.ok(['build', '-f', join(dir, 'build.toml'), '-t', 'built'], { timeoutMs: 300_000 });
    await h.ok(['run', '-d', '--name', 'b-1', '--from', 'built']);
    await h.ok(['run', '-d', '--name', 'b-2', '--from', 'built']);
    const ports = await Promise.all(['b-1', 'b-2'].map(async (name) => (await vm(name)).network!.ports));
    assert.deepEqual(ports.map((list) => list.map((p) => `${p.guestPort}/${p.protocol}`)), [['80/tcp', '5353/udp'], ['80/tcp', '5353/udp']]);
    const web = ports.map((list) => list[0]!.hostPort);
    assert.notEqual(web[0], web[1], 'each on a port of its own');
    for (const port of web) assert.equal((await net.inHost('curl', ['-s', '--max-time', '10', `http://127.0.0.1:${port}/`])).stdout, 'from the build\n', `port ${port}`);
    await h.ok(['rm', '-f', 'b-1', 'b-2']);
    await h.ok(['snapshot', 'rm', '--force', 'built']); // its cache entry and its spare (and namespace) go with it
  });

  test('named networks: VMs on one reach each other by name, not across networks; --internal has no way out; connect and disconnect a running VM; rm is refused while in use', async () => {
    await h.ok(['network', 'create', 'backend']);
    await h.ok(['network', 'create', '--internal', '--subnet', '10.77.0.0/24', 'vault']);
    const serve = (text: string) => ['busybox', '--', 'sh', '-c', `mkdir -p /www && echo ${text} > /www/index.html && exec httpd -f -p 80 -h /www`];
    await h.ok(['run', '-d', '--name', 'db', '--network', 'backend', ...serve('db')]);
    await h.ok(['run', '-d', '--name', 'app', '--network', 'backend', 'busybox']);
    await h.ok(['run', '-d', '--name', 'loner', ...serve('loner')]);
    await h.ok(['run', '-d', '--name', 'sealed', '--network', 'vault', ...serve('sealed')]);
    await net.assertConfined();
    const addressOf = async (name: string, network: string) => (await vm(name)).network!.networks.find((n) => n.name === network)!.address;
    const db = await addressOf('db', 'backend');
    assert.match(db, /^10\.90\.\d+\.\d+$/);

    // By name on the network, and by address.
    const lookup = await inGuest('app', 'nslookup db');
    assert.match(lookup.stdout, new RegExp(`Address:\\s+${db.replace(/\./g, '\\.')}`), lookup.stdout + lookup.stderr);
    assert.equal((await inGuest('app', `timeout 10 wget -q -O- http://${db}/`)).stdout, 'db\n');
    // A named network with a way out reaches the fake internet.
    assert.equal((JSON.parse((await inGuest('app', `timeout 10 wget -q -O- http://${ADDR.siteA}/`)).stdout) as { site: string }).site, 'a');

    // Not across networks: the default network's VM neither resolves nor reaches db.
    assert.doesNotMatch((await inGuest('loner', 'nslookup db')).stdout, new RegExp(db.replace(/\./g, '\\.')));
    assert.notEqual((await inGuest('loner', `timeout 3 wget -q -O- http://${db}/`)).code, 0, 'default -> backend is dropped');
    assert.notEqual((await inGuest('app', `timeout 3 wget -q -O- http://${await addressOf('loner', 'default')}/`)).code, 0, 'backend -> default is dropped');

    // --internal: no way out.
    assert.notEqual((await inGuest('sealed', `timeout 3 wget -q -O- http://${ADDR.siteA}/`)).code, 0, 'an internal network has no way out');

    // connect a running VM: app reaches sealed by name at once; disconnect: no more.
    const sealed = await addressOf('sealed', 'vault');
    assert.notEqual((await inGuest('app', `timeout 3 wget -q -O- http://${sealed}/`)).code, 0);
    await h.ok(['network', 'connect', 'vault', 'app']);
    assert.match((await inGuest('app', 'nslookup sealed')).stdout, new RegExp(sealed.replace(/\./g, '\\.')));
    assert.equal((await inGuest('app', `timeout 10 wget -q -O- http://${sealed}/`)).stdout, 'sealed\n');
    assert.equal((JSON.parse((await inGuest('app', `timeout 10 wget -q -O- http://${ADDR.siteA}/`)).stdout) as { site: string }).site, 'a', 'still out through backend');
    await h.ok(['network', 'disconnect', 'vault', 'app']);
    assert.notEqual((await inGuest('app', `timeout 3 wget -q -O- http://${sealed}/`)).code, 0, 'cut off again');
    const last = await h.cell(['network', 'disconnect', 'backend', 'app']);
    assert.match(last.stderr, /only network/);

    // rm is refused while VMs are on it, naming them; after they are gone, nothing of it is left.
    const busy = await h.cell(['network', 'rm', 'backend']);
    assert.notEqual(busy.code, 0);
    assert.match(busy.stderr, /in use by (db, app|app, db)/);
    await h.ok(['rm', '-f', 'db', 'app', 'loner', 'sealed']);
    assert.deepEqual((await h.ok(['network', 'prune'])).stdout.trim().split('\n').sort(), ['backend', 'vault']);
    const links = await net.inHost('ip', ['-o', 'link', 'show', 'type', 'bridge']);
    assert.deepEqual(links.stdout.trim().split('\n').map((l) => l.split(': ')[1]!.split('@')[0]), ['cell0'], 'only the default bridge is left');
    const rules = (await net.inHost('nft', ['list', 'table', 'ip', 'cellvm'])).stdout;
    assert.match(rules, /cell0/);
    assert.doesNotMatch(rules, /10\.77\.0\.|cell[0-9a-f]{8}/, 'no rule of a removed network is left');
    assert.deepEqual(await ours(), []);
  });
});
