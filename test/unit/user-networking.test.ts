/**
 * Which networking a celld takes, and user-mode networking's bookkeeping on a real SQLite store
 * and real host sockets (the QEMU side is test/e2e/network-user.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { defaultNetworking } from '../../src/engine/engine.js';
import { HostNetworking, NoNetworking } from '../../src/engine/networking.js';
import { UserNetworking } from '../../src/engine/user-networking.js';
import { CellError } from '../../src/domain/errors.js';
import { newVmRecord } from '../../src/domain/vm.js';
import { openDatabase } from '../../src/store/database.js';
import { NetworkStore } from '../../src/store/lease-store.js';
import { VmStore } from '../../src/store/vm-store.js';

function withStores(fn: (stores: { vms: VmStore; networks: NetworkStore }) => Promise<void>): Promise<void> {
  const dir = mkdtempSync('/tmp/cell-usernet-');
  const db = openDatabase(join(dir, 'cell.db'));
  return fn({ vms: new VmStore(db), networks: new NetworkStore(db) }).finally(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
}

const vmWith = (id: string, ports: { hostPort: number; guestPort: number }[]) =>
  newVmRecord(id, `vm-${id.slice(0, 4)}`, {
    image: 'busybox', imageDigest: 'sha256:x', cpus: 1, memoryMib: 64, cmd: [], env: [], workingDir: '/', user: 'root', timeoutSec: 0, autoRemove: false,
    networks: ['default'],
    ports: ports.map((p) => ({ hostIp: '127.0.0.1', protocol: 'tcp' as const, ...p })),
  }, null);

const refused = (code: string, pattern: RegExp) => (err: unknown) => err instanceof CellError && err.code === code && pattern.test(err.message);

test('a celld without root takes user-mode networking; CELL_NETWORK=off none; CELL_NETWORK=user user mode even as root; root the kernel', () =>
  withStores(async (stores) => {
    const nonRoot = defaultNetworking('/tmp/h', stores, {}, 1000);
    assert.ok(nonRoot instanceof UserNetworking);
    assert.equal(nonRoot.status.available, true);
    assert.match(nonRoot.status.reason, /^user-mode/);
    assert.ok(defaultNetworking('/tmp/h', stores, { CELL_NETWORK: 'off' }, 1000) instanceof NoNetworking);
    assert.ok(defaultNetworking('/tmp/h', stores, { CELL_NETWORK: 'user' }, 0) instanceof UserNetworking);
    assert.ok(defaultNetworking('/tmp/h', stores, {}, 0) instanceof HostNetworking);
  }));

test('user mode: named networks, egress rules and connect are refused with the reason; ports are picked free, a taken one is refused; inspect shows the guest address', () =>
  withStores(async (stores) => {
    const net = new UserNetworking(stores.networks, stores.vms);
    assert.doesNotThrow(() => net.assertNetworks(['default']));
    assert.throws(() => net.assertNetworks(['default', 'backend']), refused('host_missing_dependency', /^network backend: this celld is not root/));
    assert.throws(() => net.assertNetworks(['default'], { egress: true }), refused('host_missing_dependency', /^egress rules are enforced by the host's kernel/));
    await assert.rejects(net.create(), refused('host_missing_dependency', /run celld as root/));
    await assert.rejects(net.reconfigure(), refused('host_missing_dependency', /cannot join or leave/));

    const held: Server = createServer();
    await new Promise<void>((resolve) => held.listen(0, '127.0.0.1', resolve));
    const taken = (held.address() as { port: number }).port;
    try {
      const clash = vmWith('a'.repeat(64), [{ hostPort: taken, guestPort: 80 }]);
      stores.vms.insert(clash);
      await assert.rejects(net.prepare(clash), refused('conflict', new RegExp(`^host port 127\\.0\\.0\\.1:${taken}/tcp is in use`)));

      const vm = vmWith('b'.repeat(64), [{ hostPort: 0, guestPort: 80 }, { hostPort: 0, guestPort: 81 }]);
      stores.vms.insert(vm);
      const nic = await net.prepare(vm);
      assert.ok(nic.user);
      const ports = nic.user.forwards.map((f) => f.hostPort);
      assert.ok(ports.every((p) => p > 0 && p !== taken) && new Set(ports).size === 2, `free, distinct ports: ${ports.join(', ')}`);
      assert.equal(stores.vms.get(vm.id)!.network, null, 'nothing to show before it runs');
      await net.attach(vm);
      stores.vms.setState(vm.id, 'starting');
      stores.vms.setState(vm.id, 'running', { pid: 1 });
      const shown = stores.vms.get(vm.id)!.network!;
      assert.deepEqual(shown.networks, [{ name: 'default', address: '172.30.255.2' }]);
      assert.deepEqual(shown.ports.map((p) => p.hostPort), ports);
      // A restart of celld keeps them: prepared again, the same free ports.
      const again = await new UserNetworking(stores.networks, stores.vms).prepare(vm);
      assert.deepEqual(again.user!.forwards.map((f) => f.hostPort), ports);
      net.forget(vm.id);
      assert.equal(stores.vms.get(vm.id)!.network, null);
    } finally {
      held.close();
    }
  }));
