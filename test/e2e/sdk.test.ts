import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { request, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { CellClient, isInvalidArgument, isNotFound, Sandbox } from '../../src/sdk/index.js';
import { TestHome } from '../helpers/cell-home.js';

// The SDK against a real celld (started on demand by the SDK itself) and real VMs.
describe('SDK', () => {
  let h: TestHome;
  let client: CellClient;
  before(async () => {
    h = new TestHome();
    client = await CellClient.connect({ home: h.home });
  });
  after(async () => {
    client.close();
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  test('Sandbox.create, run with output captured, snapshot, fork from it, dispose', async () => {
    let forkName = '';
    {
      await using sb = await Sandbox.create({ client, name: 'sdk-box', env: ['GREETING=hi'] });
      const r = await sb.commands.run('echo $GREETING; echo oops >&2; exit 2');
      assert.deepEqual([r.exitCode, r.stdout, r.stderr], [2, 'hi\n', 'oops\n']);
      await sb.commands.run('echo remembered > /root/note');
      const snap = await sb.snapshot({ name: 'sdk-snap' });
      {
        await using fork = await Sandbox.create({ client, fromSnapshot: snap.id });
        forkName = fork.name;
        const note = await fork.commands.run(['cat', '/root/note']);
        assert.equal(note.stdout, 'remembered\n');
      }
      const names = (await client.vms.list({ all: true })).map((v) => v.name);
      assert.ok(!names.includes(forkName), 'the fork was removed when its block ended');
    }
    const names = (await client.vms.list({ all: true })).map((v) => v.name);
    assert.ok(!names.includes('sdk-box'), 'the sandbox was removed when its block ended');
    await client.snapshots.remove('sdk-snap');
  });

  test('sandbox.fork: a snapshot and N running forks with their own identities', async () => {
    await using sb = await Sandbox.create({ client, name: 'parent' });
    await sb.commands.run('echo shared > /root/state');
    const forks = await sb.fork({ count: 2, name: 'child', snapshotName: 'parent-snap' });
    try {
      const seen = await Promise.all(forks.map(async (f) => (await f.commands.run('cat /root/state; hostname')).stdout));
      assert.deepEqual(seen, ['shared\nchild-1\n', 'shared\nchild-2\n']);
      assert.equal((await sb.commands.run('hostname')).stdout, 'parent\n', 'the parent keeps running, as itself');
    } finally {
      for (const f of forks) await f[Symbol.asyncDispose]();
    }
    await sb.kill();
    await client.snapshots.remove('parent-snap');
  });

  test('errors carry stable codes', async () => {
    await assert.rejects(client.vms.get('nope'), isNotFound);
    await assert.rejects(
      client.vms.create({ image: 'busybox', memoryMib: 1 }),
      (err: unknown) => isInvalidArgument(err) && /--memory 1/.test(err.message),
    );
  });

  test('exec streams output as it is produced, before the command ends; a client that stops reading holds back only its own command', async () => {
    await using sb = await Sandbox.create({ client });
    const seen: number[] = [];
    const started = Date.now();
    await sb.commands.run(['sh', '-c', 'echo first; sleep 1; echo second'], { onStdout: () => void seen.push(Date.now() - started) });
    assert.equal(seen.length, 2);
    assert.ok(seen[1]! - seen[0]! >= 800, `the first line arrived ${seen[1]! - seen[0]!} ms before the second`);

    // A raw API client that stops reading a command printing 6.9 MB: celld withholds that exec's
    // credit, while other commands and file calls on the same VM (one agent connection) go on.
    const LINES = 1_000_000;
    const expected = Buffer.from(Array.from({ length: LINES }, (_, i) => `${i + 1}\n`).join(''));
    const req = request({ socketPath: join(h.home, 'celld.sock'), method: 'POST', path: `/v1/vms/${sb.name}/exec`, headers: { 'content-type': 'application/json' } });
    req.end(JSON.stringify({ cmd: ['seq', '1', String(LINES)] }));
    const [res] = (await once(req, 'response')) as [IncomingMessage];
    try {
      res.pause();
      // Held, not just slow: seq sleeps in write() on its full pipe, which the agent no longer reads.
      let wchan = '';
      for (let i = 0; i < 50 && wchan !== 'pipe_write'; i++) wchan = (await sb.commands.run('cat /proc/$(pidof seq)/wchan')).stdout;
      assert.equal(wchan, 'pipe_write');
      assert.equal((await sb.commands.run('echo quick')).stdout, 'quick\n');
      await sb.files.write('/root/during', 'written while another command is held');
      assert.equal((await sb.files.read('/root/during')).toString(), 'written while another command is held');
      const hash = createHash('sha256');
      let count = 0;
      let exit: unknown;
      res.setEncoding('utf8');
      let partial = '';
      for await (const text of res) {
        const lines = (partial + text).split('\n');
        partial = lines.pop()!;
        for (const line of lines.filter(Boolean)) {
          const event = JSON.parse(line) as { type: string; data?: string; exitCode?: number };
          if (event.type === 'stdout') {
            const bytes = Buffer.from(event.data!, 'base64');
            hash.update(bytes);
            count += bytes.length;
          } else if (event.type === 'exit') exit = event.exitCode;
          else assert.fail(`unexpected event ${line.slice(0, 200)}`);
        }
      }
      assert.equal(exit, 0);
      assert.equal(count, expected.length, 'every byte, once the client read again');
      assert.equal(hash.digest('hex'), createHash('sha256').update(expected).digest('hex'), 'in order');
    } finally {
      res.destroy();
    }
  });

  test('commands.start: stdin, output by async iteration, wait; kill ends a command that would run on', async () => {
    await using sb = await Sandbox.create({ client });
    const cat = await sb.commands.start(['sh', '-c', 'tr a-z A-Z; echo done >&2'], { stdin: true });
    cat.stdin!.end('hello\n');
    const seen: string[] = [];
    for await (const { stream, data } of cat) seen.push(`${stream}:${data}`);
    assert.deepEqual(seen, ['stdout:HELLO\n', 'stderr:done\n']);
    assert.equal((await cat.wait()).exitCode, 0);

    const sleeper = await sb.commands.start('sleep 600');
    await sleeper.kill();
    await assert.rejects(sleeper.wait(), { name: 'AbortError' });

    const limited = await sb.commands.run('sleep 5', { commandTimeoutMs: 300 });
    assert.deepEqual([limited.exitCode, limited.timedOut], [124, true]);
  });
});
