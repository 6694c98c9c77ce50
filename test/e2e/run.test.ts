import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { TestHome } from '../helpers/cell-home.js';

// `cell run` end to end: real celld, real QEMU, real guest agent.
describe('cell run', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), [], 'no QEMU of this home may be left');
  });

  test('starts celld on demand and runs a command, exiting with its code', async () => {
    assert.equal(h.daemonPid(), null);
    const r = await h.cell(['run', '--rm', 'busybox', '--', 'sh', '-c', 'echo hello from $(uname -s); exit 7']);
    assert.equal(r.stdout, 'hello from Linux\n', r.stderr);
    assert.equal(r.code, 7);
    assert.ok(h.daemonPid(), 'celld was started and wrote its pid file');
  });

  test('keeps stdout and stderr apart, each in order', async () => {
    const script = 'for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; seq 1 5000 | tail -n 1';
    const r = await h.cell(['run', '--rm', 'busybox', '--', 'sh', '-c', script]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'out1\nout2\nout3\nout4\nout5\n5000\n');
    assert.equal(r.stderr, 'err1\nerr2\nerr3\nerr4\nerr5\n');
  });

  test('passes large output through intact', async () => {
    const r = await h.cell(['run', '--rm', 'busybox', '--', 'seq', '1', '100000']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 100000);
    assert.equal(lines[0], '1');
    assert.equal(lines[99999], '100000');
  });

  test('honours -e, -w and the image PATH, and runs without -- too', async () => {
    const r = await h.cell(['run', '--rm', '-e', 'GREETING=hi there', '-e', 'N=2', '-w', '/etc', 'busybox', 'sh', '-c', 'echo "$GREETING $N $(pwd)"; ls -d passwd']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hi there 2 /etc\npasswd\n');
  });

  test('passes options after the image to the command', async () => {
    const r = await h.cell(['run', '--rm', 'busybox', 'ls', '-d', '/proc', '/sys']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '/proc\n/sys\n');
  });

  test('gives the guest the VM name as hostname and the host clock', async () => {
    const r = await h.cell(['run', '--rm', '--name', 'clocky', 'busybox', '--', 'sh', '-c', 'hostname; date +%s']);
    assert.equal(r.code, 0, r.stderr);
    const [name, secs] = r.stdout.trim().split('\n');
    assert.equal(name, 'clocky');
    assert.ok(Math.abs(Number(secs) - Date.now() / 1000) < 5, `guest clock ${secs} is close to the host's`);
  });

  test('-u takes names from the image\'s /etc/passwd, or numbers', async () => {
    const named = await h.cell(['run', '--rm', '-u', 'nobody', 'busybox', '--', 'sh', '-c', 'id -u; id -g']);
    assert.equal(named.stdout, '65534\n65534\n', named.stderr);
    const numeric = await h.cell(['run', '--rm', '-u', '1000:0', 'busybox', '--', 'sh', '-c', 'id -u; id -g']);
    assert.equal(numeric.stdout, '1000\n0\n', numeric.stderr);
    const unknown = await h.cell(['run', '--rm', '-u', 'ghost', 'busybox', '--', 'true']);
    assert.equal(unknown.code, 125);
    assert.match(unknown.stderr, /user "ghost" is not in the image's \/etc\/passwd/);
  });

  test('a command that does not exist exits 127 like a shell', async () => {
    const r = await h.cell(['run', '--rm', 'busybox', '--', 'no-such-command', 'x']);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /no-such-command: not found/);
  });

  test('--timeout kills a command that runs too long', async () => {
    const r = await h.cell(['run', '--rm', '--timeout', '1', 'busybox', '--', 'sleep', '60']);
    assert.equal(r.code, 124);
    assert.match(r.stderr, /timed out after 1 s/);
    assert.ok(r.ms < 30_000, `returned after ${r.ms} ms, not after the command's 60 s`);
  });

  test('--rm leaves nothing behind, without it the VM is kept stopped with its exit code', async () => {
    const kept = await h.cell(['run', '--name', 'kept', 'busybox', '--', 'sh', '-c', 'exit 3']);
    assert.equal(kept.code, 3);
    const ps = await h.ok(['ps', '-a', '--format', 'json']);
    const vms = JSON.parse(ps.stdout) as { name: string; state: string; exit: { exitCode: number } | null }[];
    assert.deepEqual(
      vms.map((v) => v.name),
      ['kept'],
      'only the VM run without --rm is listed',
    );
    assert.equal(vms[0]!.state, 'stopped');
    assert.equal(vms[0]!.exit?.exitCode, 3);
    assert.deepEqual(h.qemuPids(), [], 'a stopped VM has no QEMU process');
    await h.ok(['rm', 'kept']);
  });
});
