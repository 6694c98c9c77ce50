/**
 * The guest agent (guest/agent.c) against the wire protocol (docs/protocol.md), without a VM:
 * the agent is compiled here and run as `agent --stdio`, which serves the protocol on its stdin
 * and stdout and runs commands on this machine.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AgentErrorCode,
  FrameDecoder,
  FrameType,
  PayloadReader,
  PayloadWriter,
  decodeError,
  decodeExit,
  encodeExec,
  encodeFrame,
  type ExecRequest,
  type Frame,
} from '../../src/agent/frame.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const STREAM_TYPES: ReadonlySet<number> = new Set([FrameType.STDOUT, FrameType.STDERR, FrameType.EXIT]);

let workDir: string;
let agentBin: string;
let agent: Agent;
let nextId = 1;

/** A running `agent --stdio` and every frame it sent, in order. */
class Agent {
  readonly proc: ChildProcessWithoutNullStreams;
  readonly frames: Frame[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr = '';
  private readonly decoder = new FrameDecoder();
  private waiters: { pred: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];

  constructor(bin: string) {
    this.proc = spawn(bin, ['--stdio'], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, signal) => resolve({ code, signal })));
    this.proc.stdin.on('error', () => {});
    this.proc.stderr.on('data', (c: Buffer) => (this.stderr += c.toString()));
    this.proc.stdout.on('data', (chunk: Buffer) => {
      for (const frame of this.decoder.push(chunk)) {
        this.frames.push(frame);
        this.waiters = this.waiters.filter((w) => {
          if (!w.pred(frame)) return true;
          w.resolve(frame);
          return false;
        });
      }
    });
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  raw(bytes: Buffer): void {
    this.proc.stdin.write(bytes);
  }

  send(type: number, id: number, payload?: Buffer): void {
    this.raw(encodeFrame(type, id, payload));
  }

  /** The first frame (already received or still to come) that matches. */
  waitFor(pred: (f: Frame) => boolean, what: string, timeoutMs = 5000): Promise<Frame> {
    const seen = this.frames.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.pred !== pred);
        reject(new Error(`timed out waiting for ${what}; agent stderr: ${this.stderr}`));
      }, timeoutMs);
      this.waiters.push({
        pred,
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
      });
    });
  }

  /** The reply to a request: the first non-stream frame with its id. */
  reply(id: number, timeoutMs?: number): Promise<Frame> {
    return this.waitFor((f) => f.id === id && !STREAM_TYPES.has(f.type), `a reply to id ${id}`, timeoutMs);
  }

  async request(type: number, payload?: Buffer): Promise<Frame> {
    const id = nextId++;
    this.send(type, id, payload);
    return this.reply(id);
  }

  async expectError(type: number, payload: Buffer | undefined, code: number): Promise<string> {
    const reply = await this.request(type, payload);
    assert.equal(reply.type, FrameType.ERROR, `expected ERROR ${code}, got type 0x${reply.type.toString(16)}`);
    const err = decodeError(reply.payload);
    assert.equal(err.code, code, `error code (message: ${err.message})`);
    return err.message;
  }

  async pingOk(): Promise<void> {
    const nonce = Buffer.from(`ping-${nextId}`);
    const pong = await this.request(FrameType.PING, nonce);
    assert.equal(pong.type, FrameType.PONG);
    assert.deepEqual(pong.payload, nonce);
  }

  /** Sends an EXEC and waits for STARTED; returns the id and pid. */
  async start(req: Partial<ExecRequest>, id = nextId++): Promise<{ id: number; pid: number }> {
    this.send(FrameType.EXEC, id, encodeExec(execRequest(req)));
    const reply = await this.reply(id);
    if (reply.type === FrameType.ERROR) assert.fail(`EXEC failed: ${decodeError(reply.payload).message}`);
    assert.equal(reply.type, FrameType.STARTED);
    return { id, pid: reply.payload.readUInt32BE(0) };
  }

  /** Waits for the exec's EXIT and returns everything it sent. */
  async finish(id: number, timeoutMs = 5000) {
    const exitFrame = await this.waitFor((f) => f.id === id && f.type === FrameType.EXIT, `EXIT of ${id}`, timeoutMs);
    const frames = this.frames.filter((f) => f.id === id);
    assert.equal(frames[0]!.type, FrameType.STARTED, 'STARTED comes first');
    assert.equal(frames.at(-1), exitFrame, 'EXIT comes last');
    const pick = (type: number) => Buffer.concat(frames.filter((f) => f.type === type).map((f) => f.payload));
    return {
      frames,
      stdout: pick(FrameType.STDOUT),
      stderr: pick(FrameType.STDERR),
      exit: decodeExit(exitFrame.payload),
    };
  }

  async run(req: Partial<ExecRequest>, timeoutMs?: number) {
    const { id } = await this.start(req);
    return this.finish(id, timeoutMs);
  }
}

function execRequest(req: Partial<ExecRequest>): ExecRequest {
  return { argv: ['true'], env: ['PATH=/usr/bin:/bin'], cwd: '/', uid: 0, gid: 0, stdin: false, ...req };
}

function u32(v: number): Buffer {
  return new PayloadWriter().u32(v).build();
}

/** Deterministic PRNG (mulberry32), so a fuzz failure replays. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** True once the process is dead: gone, or a zombie its new parent has not reaped yet. */
function processGone(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

before(() => {
  workDir = mkdtempSync(join(tmpdir(), 'cell-agent-test-'));
  agentBin = join(workDir, 'agent');
  execFileSync('gcc', ['-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', agentBin, join(repoRoot, 'guest/agent.c')], {
    stdio: 'pipe',
  });
  agent = new Agent(agentBin);
});

after(async () => {
  if (agent?.alive) {
    agent.proc.kill('SIGKILL');
    await agent.exited;
  }
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

test('HELLO comes first, with id 0, the agent version and the kernel release', async () => {
  const hello = await agent.waitFor((f) => f.type === FrameType.HELLO, 'HELLO');
  assert.equal(agent.frames[0], hello);
  assert.equal(hello.id, 0);
  const r = new PayloadReader(hello.payload);
  assert.match(r.string(), /^\d+\.\d+\.\d+/);
  assert.equal(r.string(), release());
});

test('PING is answered with a PONG carrying the same bytes', async () => {
  const bytes = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff));
  const pong = await agent.request(FrameType.PING, bytes);
  assert.equal(pong.type, FrameType.PONG);
  assert.deepEqual(pong.payload, bytes);
  const empty = await agent.request(FrameType.PING);
  assert.equal(empty.type, FrameType.PONG);
  assert.equal(empty.payload.length, 0);
  await agent.expectError(FrameType.PING, Buffer.alloc(65537), AgentErrorCode.MALFORMED);
});

test('exec: stdout, stderr and the exit code arrive on the exec id', async () => {
  const r = await agent.run({ argv: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'] });
  assert.equal(r.stdout.toString(), 'out\n');
  assert.equal(r.stderr.toString(), 'err\n');
  assert.deepEqual(r.exit, { signaled: false, code: 3 });
});

test('large output arrives complete, in order, in chunks of at most 64 KiB', async () => {
  const r = await agent.run({ argv: ['seq', '1', '20000'] });
  const expected = Array.from({ length: 20000 }, (_, i) => `${i + 1}\n`).join('');
  assert.equal(r.stdout.toString(), expected);
  assert.deepEqual(r.exit, { signaled: false, code: 0 });
  const big = await agent.run({ argv: ['/bin/sh', '-c', 'head -c 3000000 /dev/zero | tr "\\0" x'] });
  assert.equal(big.stdout.length, 3_000_000);
  assert.ok(big.stdout.every((b) => b === 0x78));
  for (const f of big.frames) assert.ok(f.payload.length <= 65536, `chunk of ${f.payload.length} bytes`);
});

test('the given environment replaces the agent environment; PATH defaults when absent', async () => {
  const r = await agent.run({ argv: ['env'], env: ['A=1', 'B=two words'] });
  assert.equal(r.stdout.toString(), 'A=1\nB=two words\n');
  assert.equal(r.exit.code, 0);
});

test('cwd and environment variables are honoured', async () => {
  const r = await agent.run({ argv: ['/bin/sh', '-c', 'echo "$FOO:$(pwd)"'], env: ['FOO=bar', 'PATH=/usr/bin:/bin'], cwd: workDir });
  assert.equal(r.stdout.toString(), `bar:${workDir}\n`);
  const root = await agent.run({ argv: ['pwd'], cwd: '' });
  assert.equal(root.stdout.toString(), '/\n');
});

test('uid and gid are switched to before the command runs', async () => {
  const r = await agent.run({ argv: ['/bin/sh', '-c', 'echo "$(id -u):$(id -g):$(id -G)"'], uid: 65534, gid: 65533 });
  if (process.getuid?.() === 0) {
    assert.equal(r.stdout.toString(), '65534:65533:65533\n');
    assert.equal(r.exit.code, 0);
  } else {
    assert.match(r.stderr.toString(), /^cell: cannot switch to uid 65534 gid 65533: /);
    assert.equal(r.exit.code, 126);
  }
});

test('a missing command exits 127 with "not found"; a non-executable file exits 126', async () => {
  const missing = await agent.run({ argv: ['definitely-not-a-command-cell'] });
  assert.equal(missing.stderr.toString(), 'cell: definitely-not-a-command-cell: not found\n');
  assert.deepEqual(missing.exit, { signaled: false, code: 127 });

  const noPath = await agent.run({ argv: [join(workDir, 'nope')] });
  assert.match(noPath.stderr.toString(), /not found/);
  assert.equal(noPath.exit.code, 127);

  const file = join(workDir, 'not-executable');
  writeFileSync(file, 'echo hi\n');
  chmodSync(file, 0o644);
  const denied = await agent.run({ argv: [file] });
  assert.equal(denied.stderr.toString(), `cell: ${file}: Permission denied\n`);
  assert.equal(denied.exit.code, 126);

  // A script without #! runs through /bin/sh, as a shell would run it.
  const script = join(workDir, 'script');
  writeFileSync(script, 'echo "script $1"\n');
  chmodSync(script, 0o755);
  const ran = await agent.run({ argv: [script, 'arg'] });
  assert.equal(ran.stdout.toString(), 'script arg\n');
});

test('a working directory that is missing or not a directory is ERROR 2 and nothing runs', async () => {
  const marker = join(workDir, 'must-not-exist');
  for (const cwd of ['/nonexistent-cell-dir', join(workDir, 'not-executable')]) {
    const id = nextId++;
    agent.send(FrameType.EXEC, id, encodeExec(execRequest({ argv: ['touch', marker], cwd })));
    const reply = await agent.reply(id);
    assert.equal(reply.type, FrameType.ERROR);
    assert.equal(decodeError(reply.payload).code, AgentErrorCode.BAD_CWD);
    await agent.pingOk();
    assert.equal(agent.frames.filter((f) => f.id === id).length, 1, 'only the ERROR');
  }
  assert.throws(() => readFileSync(marker));
});

test('STDIN frames reach the process; an empty STDIN closes its stdin', async () => {
  const { id } = await agent.start({ argv: ['cat'], stdin: true });
  agent.send(FrameType.STDIN, id, Buffer.from('hello\n'));
  agent.send(FrameType.STDIN, id, Buffer.from('world\n'));
  agent.send(FrameType.STDIN, id);
  const r = await agent.finish(id);
  assert.equal(r.stdout.toString(), 'hello\nworld\n');
  assert.deepEqual(r.exit, { signaled: false, code: 0 });

  // More than the pipe holds: the agent queues it and feeds the process as it reads.
  const big = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + (i >> 12)) & 0xff;
  const cat = await agent.start({ argv: ['cat'], stdin: true });
  for (let off = 0; off < big.length; off += 65536) agent.send(FrameType.STDIN, cat.id, big.subarray(off, off + 65536));
  agent.send(FrameType.STDIN, cat.id);
  const echoed = await agent.finish(cat.id);
  assert.ok(echoed.stdout.equals(big), 'the bytes come back unchanged');

  // Without the stdin flag the process reads /dev/null.
  const devNull = await agent.run({ argv: ['cat'] });
  assert.equal(devNull.stdout.length, 0);
  assert.equal(devNull.exit.code, 0);

  await agent.expectError(FrameType.STDIN, Buffer.from('x'), AgentErrorCode.UNKNOWN_ID);
});

test('KILL signals the process group; EXIT reports the signal', async () => {
  const { id } = await agent.start({ argv: ['sleep', '100'] });
  await agent.expectError(FrameType.KILL, u32(9), AgentErrorCode.UNKNOWN_ID); // a fresh id names no exec

  agent.send(FrameType.KILL, id, u32(9));
  const r = await agent.finish(id);
  assert.equal(r.frames.find((f) => f.type === FrameType.OK)?.id, id, 'KILL acknowledged with OK');
  assert.deepEqual(r.exit, { signaled: true, code: 9 });

  // The background sleep holds the output pipes: only a group kill lets EXIT through.
  const group = await agent.start({ argv: ['/bin/sh', '-c', 'sleep 100 & sleep 100; wait'] });
  await new Promise((r) => setTimeout(r, 100));
  agent.send(FrameType.KILL, group.id, u32(15));
  const g = await agent.finish(group.id);
  assert.deepEqual(g.exit, { signaled: true, code: 15 });

  const bad = await agent.start({ argv: ['sleep', '100'] });
  agent.send(FrameType.KILL, bad.id, Buffer.from([0, 0, 9]));
  const err = await agent.waitFor((f) => f.id === bad.id && f.type === FrameType.ERROR, 'ERROR for a short KILL');
  assert.equal(decodeError(err.payload).code, AgentErrorCode.MALFORMED);
  agent.send(FrameType.KILL, bad.id, u32(9));
  assert.equal((await agent.finish(bad.id)).exit.code, 9);
});

test('EXIT waits until the output pipes reached EOF, not only for the process', async () => {
  const r = await agent.run({ argv: ['/bin/sh', '-c', '(sleep 0.3; echo late) & echo early'] });
  assert.equal(r.stdout.toString(), 'early\nlate\n');
  assert.deepEqual(r.exit, { signaled: false, code: 0 });
});

test('two execs at once are kept apart by id and interleave', async () => {
  const script = (tag: string) => `for i in 1 2 3 4; do echo ${tag}$i; sleep 0.05; done`;
  const a = await agent.start({ argv: ['/bin/sh', '-c', script('a')] });
  const b = await agent.start({ argv: ['/bin/sh', '-c', script('b')] });
  const [ra, rb] = await Promise.all([agent.finish(a.id), agent.finish(b.id)]);
  assert.equal(ra.stdout.toString(), 'a1\na2\na3\na4\n');
  assert.equal(rb.stdout.toString(), 'b1\nb2\nb3\nb4\n');
  const startedB = agent.frames.findIndex((f) => f.id === b.id && f.type === FrameType.STARTED);
  const exitA = agent.frames.findIndex((f) => f.id === a.id && f.type === FrameType.EXIT);
  const outputB = agent.frames.findIndex((f) => f.id === b.id && f.type === FrameType.STDOUT);
  assert.ok(startedB < exitA && outputB < exitA, 'b ran while a was running');
});

test('an id still running is a duplicate (ERROR 4); it is free again after EXIT', async () => {
  const { id } = await agent.start({ argv: ['sleep', '100'] });
  agent.send(FrameType.EXEC, id, encodeExec(execRequest({ argv: ['true'] })));
  const dup = await agent.waitFor((f) => f.id === id && f.type === FrameType.ERROR, 'ERROR 4');
  assert.equal(decodeError(dup.payload).code, AgentErrorCode.DUPLICATE_ID);
  agent.send(FrameType.KILL, id, u32(9));
  await agent.finish(id);

  const reuse = nextId++;
  agent.send(FrameType.EXEC, reuse, encodeExec(execRequest({ argv: ['true'] })));
  await agent.waitFor((f) => f.id === reuse && f.type === FrameType.EXIT, 'first EXIT');
  agent.send(FrameType.EXEC, reuse, encodeExec(execRequest({ argv: ['echo', 'again'] })));
  await agent.waitFor(
    (f) => f.id === reuse && f.type === FrameType.STDOUT && f.payload.toString() === 'again\n',
    'output of the reused id',
  );
  // Its second EXIT too: the next test needs every one of the 256 slots free.
  const exits = () => agent.frames.filter((f) => f.id === reuse && f.type === FrameType.EXIT).length;
  await agent.waitFor(() => exits() === 2, 'the second EXIT');
});

test('256 execs run at once; the 257th is ERROR 6; SIGNAL_ALL counts and signals them', async () => {
  const ids: number[] = [];
  for (let i = 0; i < 256; i++) {
    const id = nextId++;
    ids.push(id);
    agent.send(FrameType.EXEC, id, encodeExec(execRequest({ argv: ['sleep', '100'] })));
  }
  for (const id of ids) assert.equal((await agent.reply(id)).type, FrameType.STARTED);
  await agent.expectError(FrameType.EXEC, encodeExec(execRequest({ argv: ['true'] })), AgentErrorCode.LIMIT);

  // Signal 0 counts; the children may still be between fork and setsid for a moment.
  let count = 0;
  for (let tries = 0; tries < 100 && count !== 256; tries++) {
    const reply = await agent.request(FrameType.SIGNAL_ALL, u32(0));
    assert.equal(reply.type, FrameType.OK);
    count = reply.payload.readUInt32BE(0);
    if (count !== 256) await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(count, 256);

  const killed = await agent.request(FrameType.SIGNAL_ALL, u32(9));
  assert.equal(killed.payload.readUInt32BE(0), 256);
  for (const id of ids) assert.deepEqual((await agent.finish(id)).exit, { signaled: true, code: 9 });
  await agent.expectError(FrameType.SIGNAL_ALL, u32(1000), AgentErrorCode.MALFORMED);
});

test('malformed frames are answered with ERROR 1 and the agent keeps serving', async () => {
  const head = () => new PayloadWriter().u32(0).u32(0).u32(0).string('/');

  let msg = await agent.expectError(FrameType.EXEC, Buffer.from([0, 0, 0, 0, 0, 0]), AgentErrorCode.MALFORMED);
  assert.match(msg, /truncated/);
  await agent.pingOk();

  msg = await agent.expectError(FrameType.EXEC, head().u32(0).u32(0).build(), AgentErrorCode.MALFORMED);
  assert.match(msg, /argc 0/);
  await agent.pingOk();

  msg = await agent.expectError(FrameType.EXEC, head().u32(100000).string('x').u32(0).build(), AgentErrorCode.MALFORMED);
  assert.match(msg, /argc 100000/);
  await agent.pingOk();

  const pastEnd = new PayloadWriter().u32(0).u32(0).u32(0).u32(1000).bytes(Buffer.from('abc')).build();
  msg = await agent.expectError(FrameType.EXEC, pastEnd, AgentErrorCode.MALFORMED);
  assert.match(msg, /past the payload end/);
  await agent.pingOk();

  await agent.expectError(FrameType.EXEC, head().u32(1).string('ls').u32(5000).build(), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.EXEC, head().u32(1).string('l\0s').u32(0).build(), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.EXEC, head().u32(1).string('ls').u32(0).u8(1).build(), AgentErrorCode.MALFORMED);
  await agent.pingOk();

  // A declared length over 1 MiB: ERROR with the header's id, then resync past the magic.
  const hugeId = nextId++;
  const header = encodeFrame(FrameType.EXEC, hugeId);
  header.writeUInt32BE(2 * 1024 * 1024, 8);
  agent.raw(header);
  const huge = await agent.reply(hugeId);
  assert.deepEqual(decodeError(huge.payload).code, AgentErrorCode.MALFORMED);
  await agent.pingOk();

  // A real frame starting 2 bytes into a bogus header: its type/flags bytes are the bogus header's
  // magic, and its id reads as a length over 1 MiB. Skipping only the bogus magic recovers it.
  const innerId = 0x7f01;
  const inner = encodeFrame(FrameType.PING, innerId, Buffer.from('nested'));
  agent.raw(Buffer.concat([Buffer.from([0xce, 0x11]), inner]));
  const bogus = await agent.reply(0x01000000);
  assert.equal(decodeError(bogus.payload).code, AgentErrorCode.MALFORMED);
  assert.equal((await agent.reply(innerId)).payload.toString(), 'nested');

  // Garbage (including a lone 0xCE) before a valid frame is skipped.
  const pingId = nextId++;
  agent.raw(Buffer.concat([Buffer.from('garbage \xce\x00 more garbage', 'latin1'), encodeFrame(FrameType.PING, pingId, Buffer.from('sync'))]));
  const pong = await agent.reply(pingId);
  assert.equal(pong.type, FrameType.PONG);
  assert.equal(pong.payload.toString(), 'sync');

  // A frame split across writes is reassembled.
  const splitId = nextId++;
  const split = encodeFrame(FrameType.PING, splitId, Buffer.from('split'));
  agent.raw(split.subarray(0, 5));
  await new Promise((r) => setTimeout(r, 20));
  agent.raw(split.subarray(5));
  assert.equal((await agent.reply(splitId)).payload.toString(), 'split');

  msg = await agent.expectError(0x55, Buffer.from('?'), AgentErrorCode.UNKNOWN_TYPE);
  assert.match(msg, /0x55/);
  await agent.expectError(FrameType.OK, undefined, AgentErrorCode.UNKNOWN_TYPE);
  await agent.pingOk();
});

test('SET_TIME, ADD_ENTROPY and SHUTDOWN validate their payloads', async () => {
  const now = BigInt(Math.floor(Date.now() / 1000));
  assert.equal((await agent.request(FrameType.SET_TIME, new PayloadWriter().i64(now).u32(5).build())).type, FrameType.OK);
  await agent.expectError(FrameType.SET_TIME, new PayloadWriter().i64(now).u32(1_000_000_000).build(), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SET_TIME, u32(1), AgentErrorCode.MALFORMED);

  assert.equal((await agent.request(FrameType.ADD_ENTROPY, Buffer.alloc(256, 7))).type, FrameType.OK);
  await agent.expectError(FrameType.ADD_ENTROPY, undefined, AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.ADD_ENTROPY, Buffer.alloc(4097), AgentErrorCode.MALFORMED);

  await agent.expectError(FrameType.SHUTDOWN, Buffer.from([2]), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SHUTDOWN, undefined, AgentErrorCode.MALFORMED);
  await agent.pingOk();
});

test('SET_IDENTITY validates the hostname and machine id (and changes nothing in --stdio mode)', async () => {
  const identity = (hostname: string | Buffer, machineId: string | Buffer = '') =>
    new PayloadWriter().string(hostname).string(machineId).build();
  const machineId = '0123456789abcdef0123456789abcdef';
  const hostBefore = hostname();
  const etcHostname = () => {
    try {
      return readFileSync('/etc/hostname', 'utf8');
    } catch {
      return null;
    }
  };
  const etcBefore = etcHostname();

  for (const ok of [identity('kid-1', machineId), identity('Kid-1'), identity('a'), identity('x'.repeat(63), machineId)]) {
    assert.equal((await agent.request(FrameType.SET_IDENTITY, ok)).type, FrameType.OK);
  }

  for (const hostname of ['', '-x', 'x-', 'x'.repeat(64), 'a b', 'a/b', 'a.b', 'a_b', 'hé', Buffer.from('a\0b')]) {
    await agent.expectError(FrameType.SET_IDENTITY, identity(hostname, machineId), AgentErrorCode.MALFORMED);
  }
  for (const bad of [machineId.slice(1), `${machineId}0`, machineId.replace('a', 'g'), machineId.toUpperCase(), `${machineId.slice(0, 31)} `]) {
    const msg = await agent.expectError(FrameType.SET_IDENTITY, identity('kid-1', bad), AgentErrorCode.MALFORMED);
    assert.match(msg, /machine_id/);
  }

  const full = identity('kid-1', machineId);
  await agent.expectError(FrameType.SET_IDENTITY, undefined, AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SET_IDENTITY, full.subarray(0, 3), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SET_IDENTITY, full.subarray(0, 9), AgentErrorCode.MALFORMED); // no machine id length
  await agent.expectError(FrameType.SET_IDENTITY, full.subarray(0, full.length - 1), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SET_IDENTITY, new PayloadWriter().string('kid-1').build(), AgentErrorCode.MALFORMED);
  const msg = await agent.expectError(FrameType.SET_IDENTITY, Buffer.concat([full, Buffer.from([0])]), AgentErrorCode.MALFORMED);
  assert.match(msg, /trailing/);
  await agent.pingOk();
  assert.equal(hostname(), hostBefore, 'the host keeps its hostname');
  assert.equal(etcHostname(), etcBefore, "the host's /etc/hostname is untouched");
});

test('a host that stops reading slows the process down instead of filling the agent memory', async () => {
  const total = 32 * 1024 * 1024;
  agent.proc.stdout.pause();
  const id = nextId++;
  agent.send(FrameType.EXEC, id, encodeExec(execRequest({ argv: ['/bin/sh', '-c', `yes 0123456789abcde | head -c ${total}`] })));
  await new Promise((r) => setTimeout(r, 700));
  const status = readFileSync(`/proc/${agent.proc.pid}/status`, 'utf8');
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
  agent.proc.stdout.resume();
  assert.ok(rssKb < 16 * 1024, `agent RSS ${rssKb} kB while the host was not reading`);
  const r = await agent.finish(id, 20000);
  assert.equal(r.stdout.length, total);
  const line = Buffer.from('0123456789abcde\n');
  for (let off = 0; off < total; off += 1 << 20) {
    assert.equal(r.stdout.subarray(off, off + 16).toString(), line.toString(), `content at ${off}`);
  }
  assert.equal(r.exit.code, 0);
});

test('fuzz: random frames and garbage never stop the agent', async () => {
  const rand = prng(0xce11);
  const int = (n: number) => Math.floor(rand() * n);
  // SHUTDOWN (0x07) would end the agent in --stdio mode, so it is left out.
  const types = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x00, 0x09, 0x55, 0x80, 0x8f, 0xff];
  const fuzzIds: number[] = [];
  for (let i = 0; i < 300; i++) {
    const id = 1_000_000 + i;
    fuzzIds.push(id);
    const payload = Buffer.alloc(int(4) === 0 ? int(5000) : int(64));
    for (let j = 0; j < payload.length; j++) payload[j] = int(256);
    if (int(3) === 0 && payload.length >= 16) payload.writeUInt32BE(int(3), 12); // sometimes a plausible argc
    const parts = [encodeFrame(types[int(types.length)]!, id, payload)];
    if (int(5) === 0) parts.unshift(Buffer.from(Array.from({ length: int(40) }, () => int(0xce))));
    agent.raw(Buffer.concat(parts));
  }
  await agent.pingOk();
  for (const id of fuzzIds) {
    const replies = agent.frames.filter((f) => f.id === id && !STREAM_TYPES.has(f.type));
    assert.equal(replies.length, 1, `frame ${id} got exactly one reply`);
  }

  // Raw garbage, magic included (never a SHUTDOWN), then enough zeros to complete any frame it
  // opened: the agent must come back to a clean stream.
  const garbage = Buffer.alloc(64 * 1024);
  for (let j = 0; j < garbage.length; j++) garbage[j] = int(8) === 0 ? 0xce : int(8) === 0 ? 0x11 : int(256);
  for (let j = 0; j + 2 < garbage.length; j++) {
    if (garbage[j] === 0xce && garbage[j + 1] === 0x11 && garbage[j + 2] === FrameType.SHUTDOWN) garbage[j + 2] = 0x01;
  }
  agent.raw(garbage);
  agent.raw(Buffer.alloc(1024 * 1024 + 12));
  await agent.pingOk();

  // Let any process a fuzzed EXEC might have started finish, then check the agent is fine.
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(agent.alive);
  await agent.pingOk();
  const r = await agent.run({ argv: ['echo', 'still here'] });
  assert.equal(r.stdout.toString(), 'still here\n');
});

test('no STDOUT or STDERR frame ever follows the EXIT of its exec', () => {
  const exited = new Set<number>();
  for (const f of agent.frames) {
    if (f.type === FrameType.EXIT) exited.add(f.id);
    else if ((f.type === FrameType.STDOUT || f.type === FrameType.STDERR) && exited.has(f.id)) {
      // An id may be reused after EXIT, but only after a new STARTED.
      assert.fail(`output for id ${f.id} after its EXIT`);
    } else if (f.type === FrameType.STARTED) exited.delete(f.id);
  }
});

test('end of input: the agent kills its processes and exits 0', async () => {
  const second = new Agent(agentBin);
  try {
    const { pid } = await second.start({ argv: ['sleep', '100'] });
    second.proc.stdin.end();
    assert.deepEqual(await second.exited, { code: 0, signal: null });
    for (let i = 0; i < 50 && !processGone(pid); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(processGone(pid), 'the sleep was killed');
  } finally {
    if (second.alive) second.proc.kill('SIGKILL');
  }
});

test('SHUTDOWN is acknowledged, then the --stdio agent exits 0', async () => {
  const third = new Agent(agentBin);
  try {
    const ok = await third.request(FrameType.SHUTDOWN, Buffer.from([0]));
    assert.equal(ok.type, FrameType.OK);
    assert.deepEqual(await third.exited, { code: 0, signal: null });
  } finally {
    if (third.alive) third.proc.kill('SIGKILL');
  }
});
