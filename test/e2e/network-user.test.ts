/**
 * User-mode networking (a celld without root: QEMU's slirp), on real QEMU, confined as the other
 * network tests are: celld runs in the host namespace of a fake internet (`ip netns exec`, so the
 * resolver QEMU reads is the fake one), whose only way out is a veth into the internet namespace.
 * CELL_NETWORK=user makes this root celld take the path a non-root one takes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ADDR, createFakeInternet, type FakeInternet } from '../helpers/fake-internet.js';
import { alive, REPO, TestHome, waitFor } from '../helpers/cell-home.js';
import { holdConnection } from '../helpers/held-connection.js';

interface VmJson {
  name: string;
  pid: number | null;
  network: { networks: { name: string; address: string }[]; ports: { hostIp: string; hostPort: number; guestPort: number; protocol: string }[] } | null;
}

describe('user-mode networking (celld without root)', () => {
  let net: FakeInternet;
  let h: TestHome;
  let celldPid = 0;

  const startCelld = async () => {
    rmSync(join(h.home, 'celld.sock'), { force: true });
    const log = openSync(join(h.home, 'celld.log'), 'a', 0o600);
    const child = spawn('ip', ['netns', 'exec', net.hostNs, process.execPath, join(REPO, 'bin/celld')], { env: h.env, detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    child.unref();
    celldPid = child.pid!;
    assert.ok(await waitFor(() => existsSync(join(h.home, 'celld.sock')), 30_000), 'celld came up');
  };
  const vm = async (name: string) => (JSON.parse((await h.ok(['inspect', name])).stdout) as VmJson[])[0]!;
  const inGuest = (name: string, script: string) => h.cell(['exec', name, '--', 'sh', '-c', script], { timeoutMs: 60_000 });
  /**
   * A guest connection that stays open, idle, across a snapshot: nc to site A that sends its
   * request only 12 s later, then waits up to a minute for the answer (its input stays open: a
   * connection left half-alive would keep it running).
   */
  const curl = (port: number) => net.inHost('curl', ['-s', '--max-time', '10', `http://127.0.0.1:${port}/`]);

  before(async () => {
    // QEMU's user-mode stack adds no link: only lo and the veth are allowed in the host namespace.
    net = await createFakeInternet();
    await net.assertConfined();
    h = new TestHome({ CELL_NETWORK: 'user' });
    await startCelld();
  });

  after(async () => {
    await h?.cleanup();
    if (celldPid && alive(celldPid)) process.kill(celldPid, 'SIGKILL');
    await net?.remove();
  });

  test('online through QEMU: DNS and outbound TCP, published ports (fixed and free) served by QEMU itself, forks on ports of their own; named networks and egress rules are refused with the reason; nothing is left after rm', async () => {
    const info = JSON.parse((await h.ok(['info', '--format', 'json'])).stdout) as { network: { available: boolean; reason: string } };
    assert.equal(info.network.available, true);
    assert.match(info.network.reason, /user-mode/);

    await h.ok(['run', '-d', '--name', 'web', '-p', '8080:80', '-p', '80', 'busybox', '--', 'sh', '-c', 'mkdir -p /www && echo hello from the guest > /www/index.html && exec httpd -f -p 80 -h /www']);
    await net.assertConfined();
    const web = await vm('web');
    assert.deepEqual(web.network!.networks, [{ name: 'default', address: '172.30.255.2' }]);
    const ports = web.network!.ports.map((p) => `${p.hostIp}:${p.hostPort}->${p.guestPort}/${p.protocol}`);
    assert.equal(ports[0], '127.0.0.1:8080->80/tcp');
    assert.match(ports[1]!, /^127\.0\.0\.1:\d+->80\/tcp$/);
    const freePort = web.network!.ports[1]!.hostPort;
    assert.notEqual(freePort, 0);
    assert.equal((await h.ok(['port', 'web', '80'])).stdout, `127.0.0.1:8080\n127.0.0.1:${freePort}\n`);
    assert.equal((await curl(8080)).stdout, 'hello from the guest\n');
    assert.equal((await curl(freePort)).stdout, 'hello from the guest\n');

    // DNS through QEMU's resolver (which asks the host namespace's: the fake DNS), and out by address.
    const lookup = await inGuest('web', 'cat /etc/resolv.conf; nslookup site-a.test');
    assert.match(lookup.stdout, /nameserver 172\.30\.255\.3/);
    assert.match(lookup.stdout, new RegExp(`Address:\\s+${ADDR.siteA.replace(/\./g, '\\.')}`), lookup.stdout + lookup.stderr);
    const fetched = await inGuest('web', `timeout 10 wget -q -O- --header 'Host: site-a.test' http://${ADDR.siteA}/hello`);
    assert.equal(fetched.code, 0, fetched.stderr);
    const seen = JSON.parse(fetched.stdout) as { site: string; client: { address: string } };
    assert.equal(seen.site, 'a');
    assert.equal(seen.client.address, ADDR.host, 'QEMU connected from the host namespace');

    // What needs the host's kernel says why it cannot be had here.
    const named = await h.cell(['run', '--rm', '--network', 'backend', 'busybox', '--', 'true']);
    assert.notEqual(named.code, 0);
    assert.match(named.stderr, /^error: network backend: this celld is not root, so its VMs use QEMU user-mode networking/);
    const fenced = await h.cell(['run', '--rm', '--egress', 'allow=site-a.test', 'busybox', '--', 'true']);
    assert.match(fenced.stderr, /^error: egress rules are enforced by the host's kernel/);
    assert.match((await h.cell(['network', 'create', 'backend'])).stderr, /^error: .*user-mode networking.*run celld as root/);
    const taken = await h.cell(['run', '--rm', '-p', '8080:80', 'busybox', '--', 'true']);
    assert.match(taken.stderr, /^error: host port 127\.0\.0\.1:8080\/tcp is in use/);
    assert.equal((await h.ok(['ps', '-a', '-q'])).stdout.trim().split('\n').length, 1, 'refused runs left no VM');

    // Forks: each its own QEMU stack at the same guest address, each on host ports of its own.
    // A connection open in the snapshot is reset in every VM that comes out of it, the source too
    // (it goes on in a new QEMU, and QEMU's user-mode sockets end with the old one), never half-alive.
    const held = await holdConnection(h, net, 'web');
    await h.ok(['snapshot', '--name', 'served', 'web']);
    await h.ok(['fork', '--count', '2', '--name', 'kid', 'served']);
    await held.assertAfterwards([], ['web', 'kid-1', 'kid-2']);
    const kidPorts: number[] = [];
    for (const name of ['kid-1', 'kid-2']) {
      const kid = await vm(name);
      assert.equal(kid.network!.ports.length, 2, `${name} publishes both of its snapshot's ports`);
      for (const p of kid.network!.ports) {
        kidPorts.push(p.hostPort);
        assert.equal((await curl(p.hostPort)).stdout, 'hello from the guest\n', `${name} serves on its port ${p.hostPort}`);
      }
      const out = await inGuest(name, `timeout 10 wget -q -O- http://${ADDR.siteB}/`);
      assert.equal((JSON.parse(out.stdout) as { site: string }).site, 'b', `${name} reaches out`);
    }
    // Each on free host ports of its own: not its source's (8080 was asked for by the source only).
    assert.equal(new Set([8080, freePort, ...kidPorts]).size, 6, `distinct ports: ${kidPorts.join(', ')}`);
    assert.equal((await curl(8080)).stdout, 'hello from the guest\n', 'the source serves on after its snapshot');

    // kill -9 of celld: QEMU holds the ports itself; the next celld shows them again.
    process.kill(celldPid, 'SIGKILL');
    await waitFor(() => !alive(celldPid), 5000);
    assert.equal((await curl(8080)).stdout, 'hello from the guest\n', 'served with no celld at all');
    await startCelld();
    assert.equal((await vm('web')).network!.ports.length, 2);

    const pids = await Promise.all(['web', 'kid-1', 'kid-2'].map(async (n) => (await vm(n)).pid!));
    await h.ok(['rm', '-f', 'web', 'kid-1', 'kid-2']);
    await h.ok(['snapshot', 'rm', 'served']);
    assert.ok(pids.every((pid) => !alive(pid)), 'every QEMU ended');
    assert.notEqual((await curl(8080)).code, 0, 'port 8080 is closed');
    assert.notEqual((await curl(freePort)).code, 0, 'the free port is closed');
  });
});
