/**
 * Per-exec flow control on the agent connection (docs/protocol.md, "Flow control"): a reader that
 * is behind holds back its own exec, never the other execs, file requests and control calls of
 * the same VM. Against the real agent run as `agent --stdio` over a unix socket (as in a VM, one
 * connection carries everything), and against a fake guest that ignores the credit it is given.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import { EXEC_WINDOW, FrameType, PayloadWriter, type ExecRequest } from '../../src/agent/frame.js';
import { GRANT_BATCH, OVERRUN_SLACK } from '../../src/agent/output-credit.js';
import { ensureAgent } from '../../src/host/agent-build.js';
import { FakeGuestServer, pongs, rejectsWithCode } from './fake-guest.js';

let work: string;
let agentBin: string;
const started: ChildProcess[] = [];
const fakes = new FakeGuestServer();

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'cell-exec-flow-'));
  agentBin = (await ensureAgent({ cacheDir: join(work, 'cache') })).path;
  await fakes.start();
});

after(async () => {
  for (const proc of started) {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await once(proc, 'exit');
    }
  }
  await fakes.stop();
  rmSync(work, { recursive: true, force: true });
});

/** An `agent --stdio` whose stdin and stdout are one end of a unix socket; the client holds the other. */
async function realAgent(): Promise<AgentClient> {
  const server = net.createServer();
  const path = join(work, `agent-${started.length}.sock`);
  server.listen(path);
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const childEnd = net.connect(path);
  await once(childEnd, 'connect');
  const [ours] = await accepted;
  started.push(spawn(agentBin, ['--stdio'], { stdio: [childEnd, childEnd, 'inherit'] }));
  childEnd.destroy();
  server.close();
  const client = new AgentClient(ours);
  await client.waitReady(Date.now() + 5000);
  return client;
}

const request = (argv: string[]): ExecRequest => ({ argv, env: ['PATH=/usr/bin:/bin'], cwd: '/', uid: 0, gid: 0, stdin: false });

/** The bytes `seq 1 n` prints. */
function seqOutput(n: number): Buffer {
  const lines: string[] = [];
  for (let i = 1; i <= n; i++) lines.push(`${i}\n`);
  return Buffer.from(lines.join(''));
}

test('a reader that is behind holds back its own exec only: another exec, a file request and a ping complete meanwhile, then every byte arrives in order', async () => {
  const agent = await realAgent();
  try {
    const LINES = 2_000_000; // 14.9 MB
    const expected = seqOutput(LINES);
    const hash = createHash('sha256');
    let count = 0;
    let reading = false;
    let resume!: () => void;
    const resumed = new Promise<void>((r) => (resume = r));
    // Behind from the first chunk on, like an API client that never reads, until `resume`.
    const held = await agent.exec(request(['seq', '1', String(LINES)]), {
      onStdout: (c) => {
        hash.update(c);
        count += c.length;
      },
      behind: () => (reading ? undefined : resumed),
    });
    // The held exec has output in flight; the connection is not paused for it.
    // (A loaded host may take a while to start seq: poll until it printed, within a bound.)
    for (const deadline = Date.now() + 20_000; count === 0 && Date.now() < deadline; ) await agent.ping();
    assert.ok(count > 0, 'the held exec produced output');

    let quickOut = '';
    const quick = await agent.exec(request(['sh', '-c', 'echo quick; echo done >&2']), { onStdout: (c) => void (quickOut += c) });
    assert.deepEqual(await quick.exit, { exitCode: 0, signal: null });
    assert.equal(quickOut, 'quick\n');
    assert.equal((await agent.stat('/')).kind, 'directory');
    assert.ok((await agent.ping()) >= 0);
    // What the guest could send while its reader was behind is its credit: nothing more piled up.
    assert.ok(count <= EXEC_WINDOW, `${count} bytes handed over while the reader was behind`);

    reading = true;
    resume();
    assert.deepEqual(await held.exit, { exitCode: 0, signal: null });
    assert.equal(count, expected.length, 'every byte');
    assert.equal(hash.digest('hex'), createHash('sha256').update(expected).digest('hex'), 'in order');
  } finally {
    agent.close();
  }
});

test('many execs on one connection, each with a reader that stalls now and then, all complete with their own output', async () => {
  const agent = await realAgent();
  try {
    const runs = [0, 1, 2, 3].map(async (k) => {
      const expected = seqOutput(200_000 + k * 1000);
      const chunks: Buffer[] = [];
      let n = 0;
      const session = await agent.exec(request(['seq', '1', String(200_000 + k * 1000)]), {
        onStdout: (c) => void chunks.push(c),
        // Every fifth chunk the reader falls behind for a moment.
        behind: () => (++n % 5 === 0 ? new Promise<void>((r) => setImmediate(r)) : undefined),
      });
      assert.deepEqual(await session.exit, { exitCode: 0, signal: null });
      assert.ok(Buffer.concat(chunks).equals(expected), `exec ${k}: its own output, whole and in order`);
    });
    await Promise.all(runs);
  } finally {
    agent.close();
  }
});

test('every connection starts with HOST_HELLO; the host grants back what its reader took, and nothing while it is behind', async () => {
  let execId = 0;
  const g = await fakes.connect((f, g) => {
    pongs(f, g);
    if (f.type === FrameType.EXEC) {
      execId = f.id;
      g.send(FrameType.STARTED, f.id, new PayloadWriter().u32(42).u32(EXEC_WINDOW).build());
    }
  });
  try {
    await g.client.waitReady(Date.now() + 5000);
    assert.equal(g.received[0]!.type, FrameType.HOST_HELLO);
    assert.equal(g.received[0]!.id, 0);

    let behind: Promise<void> | undefined;
    let release!: () => void;
    const session = await g.client.exec(request(['yes']), { onStdout: () => {}, behind: () => behind });
    assert.equal(session.pid, 42);
    assert.equal(g.received.find((f) => f.type === FrameType.EXEC)!.payload.readUInt32BE(0) & 2, 2, 'EXEC asks for flow control');
    const granted = () => g.received.filter((f) => f.type === FrameType.CREDIT && f.id === execId).reduce((n, f) => n + f.payload.readUInt32BE(0), 0);
    const chunk = Buffer.alloc(16 * 1024, 'y');
    const sendOutput = async (bytes: number) => {
      for (let sent = 0; sent < bytes; sent += chunk.length) g.send(FrameType.STDOUT, execId, chunk);
      await g.client.ping(); // the host has handled them (the PONG came after them)...
      await g.client.ping(); // ...and what it sent meanwhile reached the guest (before this PING)
    };

    await sendOutput(EXEC_WINDOW);
    assert.ok(granted() > EXEC_WINDOW - GRANT_BATCH, `granted ${granted()} of the ${EXEC_WINDOW} bytes taken`);
    assert.ok(g.received.filter((f) => f.type === FrameType.CREDIT).length <= EXEC_WINDOW / GRANT_BATCH, 'in batches, not per chunk');
    const before = granted();
    behind = new Promise<void>((r) => (release = r));
    await sendOutput(EXEC_WINDOW / 2);
    assert.equal(granted(), before, 'nothing granted while the reader is behind');
    behind = undefined;
    release();
    await g.next((f) => f.type === FrameType.CREDIT && granted() === EXEC_WINDOW + EXEC_WINDOW / 2);
    assert.equal(granted(), EXEC_WINDOW + EXEC_WINDOW / 2, 'all of it, once the reader caught up');
    g.send(FrameType.EXIT, execId, Buffer.from([0, 0, 0, 0, 0]));
    assert.deepEqual(await session.exit, { exitCode: 0, signal: null });
  } finally {
    await g.close();
  }
});

test('a guest that ignores its credit has that exec closed (process killed) with a clear error; celld holds at most the window and a frame, and the connection carries on', async () => {
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  const ids: number[] = [];
  const g = await fakes.connect((f, g) => {
    pongs(f, g);
    if (f.type === FrameType.EXEC) {
      ids.push(f.id);
      g.send(FrameType.STARTED, f.id, new PayloadWriter().u32(7).u32(EXEC_WINDOW).build());
    }
    if (f.type === FrameType.KILL) g.send(FrameType.OK, f.id);
  });
  try {
    let handed = 0;
    let release!: () => void;
    const never = new Promise<void>((r) => (release = r));
    // A reader that stopped reading: no credit is granted back.
    const flooded = await g.client.exec(request(['yes']), { onStdout: (c) => void (handed += c.length), behind: () => never });
    const id = ids[0]!;
    const frame = Buffer.alloc(64 * 1024, 'y');
    // Up to the slack past the credit is tolerated...
    for (let sent = 0; sent < EXEC_WINDOW + OVERRUN_SLACK; sent += frame.length) g.send(FrameType.STDOUT, id, frame);
    await g.client.ping();
    assert.equal(handed, EXEC_WINDOW + OVERRUN_SLACK);
    // ...one byte more is not, and neither is the flood after it (16 MiB, all dropped).
    g.send(FrameType.STDOUT, id, Buffer.from('y'));
    for (let i = 0; i < 256; i++) g.send(FrameType.STDOUT, id, frame);
    await rejectsWithCode(flooded.exit, 'agent_error', /past the 262144-byte credit/);
    const kill = await g.next((f) => f.type === FrameType.KILL && f.id === id);
    assert.equal(kill.payload.readUInt32BE(0), 9);
    await g.client.ping();
    assert.equal(handed, EXEC_WINDOW + OVERRUN_SLACK, 'nothing past the bound reached the reader');
    release();

    // The connection and the next exec are fine.
    const next = await g.client.exec(request(['true']));
    g.send(FrameType.EXIT, ids[1]!, Buffer.from([0, 0, 0, 0, 0]));
    assert.deepEqual(await next.exit, { exitCode: 0, signal: null });
    assert.equal(g.client.closed, false);
    assert.deepEqual(uncaught, []);
  } finally {
    process.off('uncaughtException', onUncaught);
    await g.close();
  }
});

test('an agent without flow control (4-byte STARTED, a VM from an older snapshot) gets no CREDIT and no credit limit: it is held back as before, by pausing the connection', async () => {
  let execId = 0;
  const g = await fakes.connect((f, g) => {
    pongs(f, g);
    if (f.type === FrameType.EXEC) {
      execId = f.id;
      g.send(FrameType.STARTED, f.id, new PayloadWriter().u32(9).build());
    }
  });
  try {
    let handed = 0;
    let release!: () => void;
    let behind: Promise<void> | undefined;
    const session = await g.client.exec(request(['yes']), { onStdout: (c) => void (handed += c.length), behind: () => behind });
    const frame = Buffer.alloc(64 * 1024, 'y');
    for (let i = 0; i < 16; i++) g.send(FrameType.STDOUT, execId, frame); // 1 MiB: past the window, not an overrun here
    await g.client.ping();
    assert.equal(handed, 16 * frame.length);
    behind = new Promise<void>((r) => (release = r));
    g.send(FrameType.STDOUT, execId, frame);
    g.send(FrameType.EXIT, execId, Buffer.from([0, 0, 0, 0, 0]));
    behind = undefined;
    release();
    assert.deepEqual(await session.exit, { exitCode: 0, signal: null });
    assert.equal(handed, 17 * frame.length);
    assert.equal(g.received.filter((f) => f.type === FrameType.CREDIT).length, 0);
  } finally {
    await g.close();
  }
});
