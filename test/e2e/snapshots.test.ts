import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { TestHome } from '../helpers/cell-home.js';

interface VmJson {
  id: string;
  name: string;
  state: string;
  baseSnapshot: string | null;
}

describe('snapshots and forks', () => {
  let h: TestHome;
  let snapshotId = '';
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  const counter = 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.1; done';
  /** A service that keeps drawing random bytes, left running in the snapshot. */
  // (It stops once /tmp/stop-sampler exists: under TCG it would slow every later test on these VMs.)
  const sampler = 'while [ ! -e /tmp/stop-sampler ]; do head -c 8 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; sleep 0.2; done > /tmp/random';

  test('snapshot of a running VM: it keeps running, its counter keeps counting', async () => {
    await h.ok(['run', '-d', '--name', 'src', 'busybox']);
    await h.ok(['exec', 'src', '--', 'sh', '-c', `echo 0123456789abcdef0123456789abcdef > /etc/machine-id; echo kept > /root/file; (${counter}) >/dev/null 2>&1 & (${sampler}) >/dev/null 2>&1 &`]);
    await new Promise((r) => setTimeout(r, 800));
    const r = await h.ok(['snapshot', '--name', 'warm', 'src']);
    snapshotId = r.stdout.trim();
    assert.match(snapshotId, /^[0-9a-f]{64}$/);
    const first = Number((await h.ok(['exec', 'src', '--', 'cat', '/tmp/counter'])).stdout);
    await new Promise((r) => setTimeout(r, 600));
    const second = Number((await h.ok(['exec', 'src', '--', 'cat', '/tmp/counter'])).stdout);
    assert.ok(first >= 3, `the counter ran before the snapshot (${first})`);
    assert.ok(second > first, `the source VM still counts after the snapshot (${first} -> ${second})`);
    // The services run in the group a snapshot freezes (so no fork's copy of them runs before the
    // fork's reseed), and the source's group was thawed after its snapshot.
    const group = (await h.ok(['exec', 'src', '--', 'sh', '-c', 'wc -l < /sys/fs/cgroup/cell-work/cgroup.procs; cat /sys/fs/cgroup/cell-work/cgroup.freeze'])).stdout.split('\n');
    assert.ok(Number(group[0]) >= 2, `the services are in the workload group (${group[0]} processes)`);
    assert.equal(group[1], '0', 'thawed');
  });

  test('forks continue the counter, see the file, and get a fresh identity', async () => {
    await new Promise((r) => setTimeout(r, 1500)); // the guest clock must be set on restore, not carried over
    const r = await h.ok(['fork', '--count', '3', '--name', 'kid', 'warm']);
    const ids = r.stdout.trim().split('\n');
    assert.equal(ids.length, 3);
    const facts = await Promise.all(
      ['kid-1', 'kid-2', 'kid-3'].map(async (name) => {
        const out = await h.ok([
          'exec', name, '--', 'sh', '-c',
          'a=$(cat /tmp/counter); sleep 0.5; b=$(cat /tmp/counter); echo $a $b; cat /root/file; hostname; cat /etc/hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s',
        ]);
        const [counts, file, hostname, etcHostname, machineId, random, clock] = out.stdout.trim().split('\n');
        const [a, b] = counts!.split(' ').map(Number);
        return { a: a!, b: b!, file, hostname, etcHostname, machineId, random, clock: Number(clock), at: Date.now() / 1000 };
      }),
    );
    for (const f of facts) {
      assert.ok(f.a >= 3, `fork starts from the snapshot's counter (${f.a})`);
      assert.ok(f.b > f.a, `fork's counter keeps counting (${f.a} -> ${f.b})`);
      assert.equal(f.file, 'kept');
      assert.equal(f.etcHostname, f.hostname);
      assert.ok(Math.abs(f.clock - f.at) <= 1.5, `guest clock ${f.clock} within a second of the host's ${f.at.toFixed(1)}`);
    }
    assert.deepEqual(facts.map((f) => f.hostname).sort(), ['kid-1', 'kid-2', 'kid-3']);
    assert.equal(new Set(facts.map((f) => f.machineId)).size, 3, 'machine ids differ');
    assert.ok(!facts.some((f) => f.machineId === '0123456789abcdef0123456789abcdef'), 'no fork keeps the source machine id');
    assert.equal(new Set(facts.map((f) => f.random)).size, 3, '/dev/urandom differs between forks');
    // The sampler left running in the snapshot: every fork shares its lines up to the snapshot
    // (and at most one drawn just before it), then each draws bytes of its own.
    const samples = await Promise.all(['kid-1', 'kid-2', 'kid-3'].map(async (name) => (await h.ok(['exec', name, '--', 'cat', '/tmp/random'])).stdout.trim().split('\n')));
    const shared = samples[0]!.filter((line) => samples[1]!.includes(line) || samples[2]!.includes(line));
    for (const [i, lines] of samples.entries()) {
      const fresh = lines.filter((line) => !shared.includes(line));
      assert.ok(fresh.length >= 2, `kid-${i + 1}'s sampler ran on after the fork (${fresh.length} new samples)`);
    }
    for (let i = 0; i < 3; i++) for (let j = i + 1; j < 3; j++) {
      const common = samples[i]!.filter((line) => samples[j]!.includes(line));
      assert.deepEqual(common, samples[i]!.slice(0, common.length), `kid-${i + 1} and kid-${j + 1} share only the samples before the snapshot`);
    }
    await Promise.all(['src', 'kid-1', 'kid-2', 'kid-3'].map((name) => h.ok(['exec', name, '--', 'touch', '/tmp/stop-sampler'])));
  });

  test('a write in one fork is invisible to its siblings and to the source', async () => {
    await h.ok(['exec', 'kid-1', '--', 'sh', '-c', 'echo mine > /root/file; echo new > /root/only-kid-1']);
    assert.equal((await h.ok(['exec', 'kid-1', '--', 'cat', '/root/file'])).stdout, 'mine\n');
    assert.equal((await h.ok(['exec', 'kid-2', '--', 'cat', '/root/file'])).stdout, 'kept\n');
    assert.equal((await h.ok(['exec', 'src', '--', 'cat', '/root/file'])).stdout, 'kept\n');
    assert.notEqual((await h.cell(['exec', 'kid-2', '--', 'cat', '/root/only-kid-1'])).code, 0);
  });

  test('forks of a fork: snapshot a fork and fork again', async () => {
    await h.ok(['snapshot', '--name', 'second', 'kid-1']);
    await h.ok(['fork', '--name', 'grandkid', 'second']);
    const out = await h.ok(['exec', 'grandkid-1', '--', 'sh', '-c', 'cat /root/file; a=$(cat /tmp/counter); sleep 0.4; b=$(cat /tmp/counter); [ $b -gt $a ] && echo counting']);
    assert.equal(out.stdout, 'mine\ncounting\n');
  });

  test('run --from forks and runs a command in one step', async () => {
    const r = await h.cell(['run', '--rm', '--from', 'warm', '--', 'sh', '-c', 'cat /root/file; exit 4']);
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stdout, 'kept\n');
  });

  test('restore rolls a VM back to its snapshot', async () => {
    await h.ok(['exec', 'src', '--', 'sh', '-c', 'echo changed > /root/file']);
    await h.ok(['restore', 'src', 'warm']);
    assert.equal((await h.ok(['exec', 'src', '--', 'cat', '/root/file'])).stdout, 'kept\n');
    const bad = await h.cell(['restore', 'kid-2', 'second']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /lineage/);
  });

  test('snapshots lists lineage; rm refuses a snapshot in use', async () => {
    const list = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string; parentVmName: string; parentSnapshot: string | null }[];
    assert.deepEqual(list.map((s) => s.name).sort(), ['second', 'warm']);
    assert.equal(list.find((s) => s.name === 'second')?.parentSnapshot, snapshotId);
    const tree = await h.ok(['snapshots', '--tree']);
    assert.match(tree.stdout, /warm[\s\S]*second/);
    const refused = await h.cell(['snapshot', 'rm', 'warm']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /second|in use/);
    const refusedSecond = await h.cell(['snapshot', 'rm', 'second']);
    assert.match(refusedSecond.stderr, /in use by VM/);
    await h.ok(['snapshot', 'rm', '-f', 'second']);
    const left = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[];
    assert.ok(!left.some((s) => s.name === 'second'), 'rm -f takes it out of the list');
    const vms = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[];
    assert.equal(vms.find((v) => v.name === 'grandkid-1')?.state, 'running', 'rm -f never removes a VM on the snapshot');
    assert.equal((await h.ok(['exec', 'grandkid-1', '--', 'cat', '/root/file'])).stdout, 'mine\n', 'and the VM still reads its disk');
  });

  test('export then import on another home then fork works', async () => {
    const file = join(h.home, 'warm.cellsnap');
    await h.ok(['snapshot', 'export', 'warm', file]);
    const other = new TestHome();
    try {
      const id = (await other.ok(['snapshot', 'import', '--name', 'moved', file])).stdout.trim();
      assert.match(id, /^[0-9a-f]{64}$/);
      await other.ok(['fork', '--name', 'arrival', 'moved']);
      const out = await other.ok(['exec', 'arrival-1', '--', 'sh', '-c', 'cat /root/file; a=$(cat /tmp/counter); sleep 0.4; [ $(cat /tmp/counter) -gt $a ] && echo counting']);
      assert.equal(out.stdout, 'kept\ncounting\n');
      const again = await other.cell(['snapshot', 'import', file]);
      assert.notEqual(again.code, 0, 'the same snapshot cannot be imported twice');
      assert.match(again.stderr, /already here/);
    } finally {
      await other.cleanup();
    }
    const bad = await h.cell(['snapshot', 'import', join(h.home, 'cell.db')]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /not a cellvm snapshot archive/);
  });

  test('prune removes the oldest snapshots nothing depends on', async () => {
    await h.ok(['run', '-d', '--name', 'tmp', 'busybox']);
    await h.ok(['snapshot', '--name', 'orphan', 'tmp']);
    await h.ok(['rm', '-f', 'tmp']);
    const before = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[];
    const r = await h.ok(['snapshot', 'prune', '--max-count', '0']);
    assert.equal(r.stdout, 'orphan\n', 'only the snapshot no VM depends on goes');
    const after = JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[];
    assert.deepEqual(after.map((s) => s.name), before.map((s) => s.name).filter((n) => n !== 'orphan'));
  });

  test('a memory-heavy guest: 96 MiB of RAM-backed data survives snapshot, fork and fork of fork', async () => {
    await h.ok(['run', '-d', '--name', 'heavy', 'busybox']);
    const fill = await h.ok(['exec', 'heavy', '--', 'sh', '-c', 'dd if=/dev/urandom of=/tmp/big bs=1M count=96 2>/dev/null; md5sum /tmp/big | cut -d" " -f1']);
    const sum = fill.stdout.trim();
    assert.match(sum, /^[0-9a-f]{32}$/);
    await h.ok(['snapshot', '--name', 'heavy-snap', 'heavy']);
    await h.ok(['fork', '--count', '2', '--name', 'heavy-kid', 'heavy-snap']);
    await h.ok(['snapshot', '--name', 'heavy-kid-snap', 'heavy-kid-1']);
    await h.ok(['fork', '--name', 'heavy-grandkid', 'heavy-kid-snap']);
    for (const vm of ['heavy', 'heavy-kid-1', 'heavy-kid-2', 'heavy-grandkid-1']) {
      const r = await h.ok(['exec', vm, '--', 'sh', '-c', 'md5sum /tmp/big | cut -d" " -f1']);
      assert.equal(r.stdout.trim(), sum, `${vm} sees the same 96 MiB`);
    }
    await h.ok(['rm', '-f', 'heavy', 'heavy-kid-1', 'heavy-kid-2', 'heavy-grandkid-1']);
  });

  test('a snapshot from an incompatible host is refused up front, naming what differs', async () => {
    await h.ok(['run', '-d', '--name', 'elsewhere', 'busybox']);
    const id = (await h.ok(['snapshot', '--stop', '--name', 'foreign', 'elsewhere'])).stdout.trim();
    // As if it had been taken by another QEMU: what an import from such a host would carry.
    const db = new Database(join(h.home, 'cell.db'));
    const row = db.prepare('SELECT compat FROM snapshots WHERE id = ?').get(id) as { compat: string };
    db.prepare('UPDATE snapshots SET compat = ? WHERE id = ?').run(JSON.stringify({ ...JSON.parse(row.compat), qemuVersion: '6.2.0' }), id);
    db.close();
    const before = (JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[]).length;
    const r = await h.cell(['fork', 'foreign']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: snapshot foreign was taken on an incompatible host: qemuVersion 6\.2\.0 \(here: [\d.]+\)\n$/);
    assert.equal((JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[]).length, before, 'no VM was made');
    const run = await h.cell(['run', '--rm', '--from', 'foreign', '--', 'true']);
    assert.equal(run.code, 125);
    assert.match(run.stderr, /incompatible host/);
  });

  test('a corrupt state file gives a clear error and leaves no VM behind', async () => {
    // A snapshot never forked before: no spare has loaded its state while it was intact.
    await h.ok(['run', '-d', '--name', 'to-corrupt', 'busybox']);
    const fresh = (await h.ok(['snapshot', '--stop', '--name', 'corrupt-me', 'to-corrupt'])).stdout.trim();
    const dir = join(h.home, 'snapshots', fresh);
    const before = (JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[]).length;
    truncateSync(join(dir, 'state'), 1000);
    const r = await h.cell(['fork', 'corrupt-me']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /state|snapshot/i);
    assert.equal(r.stderr.trim().split('\n')[0]!.startsWith('error: '), true);
    const after = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as VmJson[];
    assert.equal(after.length, before, 'no VM record is left');
    assert.equal(readdirSync(join(h.home, 'vms')).length, before, 'no VM directory is left');
  });
});
