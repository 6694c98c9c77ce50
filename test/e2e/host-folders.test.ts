import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestHome, alive, waitFor } from '../helpers/cell-home.js';
import { CellClient, Sandbox } from '../../src/sdk/index.js';

/** A member of celld's socket group (nogroup), not root: what a developer on a shared host is. */
const MEMBER = { uid: 65533, gid: 65534 };

/** The virtiofsd processes sharing folders under `base`: pid, uid and root directory. */
function virtiofsds(base: string): { pid: number; uid: number; rootIno: number }[] {
  const found = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (!cmdline.includes('virtiofsd') || !cmdline.includes(`source=${base}/`)) continue;
      const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${entry}/status`, 'utf8'))?.[1]);
      found.push({ pid: Number(entry), uid, rootIno: statSync(`/proc/${entry}/root`).ino });
    } catch {
      /* gone meanwhile, or a process whose cwd we cannot read */
    }
  }
  return found;
}

// Host folders shared live (virtio-fs) on real VMs, by a caller who is not root and by root.
describe('host folders', () => {
  let h: TestHome;
  let base: string;
  let project: string;
  before(async () => {
    h = new TestHome({ CELL_SOCKET_GROUP: 'nogroup' });
    await h.ok(['ps']); // celld starts as root; then the member may reach its socket
    chmodSync(h.home, 0o711);
    base = mkdtempSync('/tmp/cellshare-');
    chmodSync(base, 0o755);
    writeFileSync(join(base, 'secret.txt'), 'host-secret\n');
    chmodSync(join(base, 'secret.txt'), 0o644);
    project = join(base, 'proj');
    mkdirSync(project);
    writeFileSync(join(project, 'notes.txt'), 'first\n');
    for (const p of [project, join(project, 'notes.txt')]) chownSync(p, MEMBER.uid, MEMBER.gid);
    // Planted on the host: a way out of the folder, if the guest could follow it on the host.
    symlinkSync(base, join(project, 'up'));
  });
  after(async () => {
    await h.cleanup();
    const left = (await waitFor(() => virtiofsds(base).length === 0, 5000)) ? [] : virtiofsds(base);
    for (const d of left) process.kill(d.pid, 'SIGKILL'); // ours: they share this test's folder
    rmSync(base, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
    assert.deepEqual(left, [], 'no virtiofsd left');
  });

  test("a member shares ./proj: edits seen both ways, the guest's files are the member's, nothing outside is reachable, :ro holds", async () => {
    const asMember = { as: MEMBER, cwd: base };
    await h.ok(['run', '-d', '--name', 'shared', '-v', './proj:/work', '-v', './proj:/ro:ro', 'busybox'], asMember);
    const exec = (script: string) => h.cell(['exec', 'shared', '--', 'sh', '-c', script], asMember);
    assert.equal((await exec('cat /work/notes.txt')).stdout, 'first\n');
    writeFileSync(join(project, 'notes.txt'), 'edited on the host, longer than before\n');
    assert.equal((await exec('cat /work/notes.txt')).stdout, 'edited on the host, longer than before\n', 'a host edit is seen at once, whole');

    // A large write with fsync too: it once made virtiofsd start a thread pool its own seccomp filter killed.
    await h.ok(['exec', 'shared', '--', 'sh', '-c', 'echo from-guest > /work/made.txt && mkdir /work/dir && dd if=/dev/zero of=/work/dir/big bs=1M count=16 conv=fsync 2>/dev/null'], asMember);
    assert.equal(statSync(join(project, 'dir', 'big')).size, 16 * 1024 * 1024);
    assert.equal(readFileSync(join(project, 'made.txt'), 'utf8'), 'from-guest\n');
    for (const p of ['made.txt', 'dir']) {
      const st = statSync(join(project, p));
      assert.deepEqual([st.uid, st.gid], [MEMBER.uid, MEMBER.gid], `${p} belongs to the member, not root`);
    }

    // Ways out: the planted symlink and .. resolve in the guest's own tree; its own files cannot be linked in.
    const escape = await exec('cat /work/up/secret.txt; cat /work/../secret.txt; cat /work/up/../secret.txt; ln /etc/passwd /work/pw; ls /work');
    assert.doesNotMatch(escape.stdout + escape.stderr, /host-secret/);
    assert.doesNotMatch(escape.stdout, /\bpw\b/);
    // Each virtiofsd runs as the member, its root directory the folder itself (its sandbox pivoted there).
    const daemons = virtiofsds(base);
    assert.ok(daemons.length >= 2, `a virtiofsd per folder: ${JSON.stringify(daemons)}`);
    for (const d of daemons) {
      assert.equal(d.uid, MEMBER.uid);
      assert.equal(d.rootIno, statSync(project).ino, `virtiofsd ${d.pid} is confined to the folder`);
    }

    // :ro is the host's to enforce: a guest that remounts read-write still cannot write.
    const ro = await exec('cat /ro/made.txt; echo x > /ro/x; mount -o remount,rw /ro; echo x > /ro/x');
    assert.match(ro.stdout, /from-guest/);
    assert.equal((ro.stderr.match(/Read-only file system/g) ?? []).length, 2, ro.stderr);
    assert.throws(() => statSync(join(project, 'x')));

    const [view] = JSON.parse((await h.ok(['inspect', 'shared'])).stdout) as { spec: { hostFolders: { source: string; path: string; readOnly: boolean; owner: { uid: number } }[] } }[];
    assert.deepEqual(view!.spec.hostFolders.map((f) => [f.source, f.path, f.readOnly, f.owner.uid]), [[project, '/work', false, MEMBER.uid], [project, '/ro', true, MEMBER.uid]]);
    assert.match((await h.cell(['snapshot', 'shared'])).stderr, /^error: VM shared shares host folder .*proj: a snapshot \(or pause --to-disk\) of a VM with host folders is refused/);
    assert.match((await h.cell(['pause', '--to-disk', 'shared'])).stderr, /^error: VM shared shares host folder .*: it cannot be paused to disk/);

    await h.ok(['stop', '-t', '0', 'shared']);
    assert.ok(await waitFor(() => virtiofsds(base).length === 0, 5000), 'the virtiofsds end with their VM');
    await h.ok(['rm', 'shared']);
  });

  test("a folder the caller cannot read is refused; root's share (made through the SDK) keeps the guest's uids; celld killed -9 leaves the share working", async () => {
    const denied = await h.cell(['run', '--rm', '-v', '/root:/r', 'busybox', '--', 'true'], { as: MEMBER, cwd: base });
    assert.equal(denied.code, 125);
    assert.match(denied.stderr, /^error: .*\/root.*permission denied/m);
    assert.match((await h.cell(['run', '--rm', '-v', `${join(project, 'notes.txt')}:/n`, 'busybox', '--', 'true'])).stderr, /^error: -v .*notes\.txt: a host folder must be a directory/);
    assert.equal((await h.ok(['ps', '-a', '-q'])).stdout, '', 'the refused runs left no VM');

    // Through the SDK this time: a volumes value that is a path is a host folder.
    const client = await CellClient.connect({ home: h.home });
    try {
      await Sandbox.create({ client, name: 'rooted', volumes: { '/w': project } });
    } finally {
      client.close();
    }
    await h.ok(['exec', 'rooted', '--', 'sh', '-c', 'echo by-root > /w/root.txt']);
    assert.equal(statSync(join(project, 'root.txt')).uid, 0, "root's share: the guest's root writes as root");

    const daemon = h.daemonPid()!;
    process.kill(daemon, 'SIGKILL');
    assert.ok(await waitFor(() => !alive(daemon), 5000), 'celld is gone');
    writeFileSync(join(project, 'after-kill.txt'), 'seen\n');
    assert.equal((await h.ok(['exec', 'rooted', '--', 'cat', '/w/after-kill.txt'])).stdout, 'seen\n', 'a new celld reaches the VM, and the share still works');
    await h.ok(['rm', '-f', 'rooted']);
    assert.ok(await waitFor(() => virtiofsds(base).length === 0, 5000), 'the virtiofsd ended with its VM');
  });
});
