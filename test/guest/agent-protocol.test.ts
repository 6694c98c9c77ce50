/**
 * The guest agent (guest/*.c) against the wire protocol (docs/protocol.md), without a VM: the
 * agent is compiled here (by ensureAgent) and run as `agent --stdio`, which serves the protocol on
 * its stdin and stdout and runs commands on this machine.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import {
  chmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AgentErrorCode,
  EXEC_WINDOW,
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
import {
  decodeDirEntries,
  decodeStat,
  encodeFileEnd,
  encodeListDir,
  encodeMkdir,
  encodePutFile,
  encodeReadFile,
  encodeStat,
  encodeSymlink,
  type PutFileMeta,
} from '../../src/agent/file-frames.js';
import { ensureAgent } from '../../src/host/agent-build.js';

const STREAM_TYPES: ReadonlySet<number> = new Set([FrameType.STDOUT, FrameType.STDERR, FrameType.EXIT, FrameType.DATA]);

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

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'cell-agent-test-'));
  // Built the way the host set-up builds it: every guest/*.c, the same flags.
  agentBin = (await ensureAgent({ cacheDir: join(workDir, 'cache') })).path;
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

test('tty: the command runs on a terminal of the size asked for, output as STDOUT, TERM defaulted', async () => {
  const tty = { rows: 24, cols: 80 };
  const r = await agent.run({ argv: ['/bin/sh', '-c', 'stty size; test -t 0 && test -t 1 && test -t 2 && echo tty; echo "$TERM"; echo err >&2; exit 3'], tty });
  assert.equal(r.stderr.length, 0, 'one stream: stderr comes on the terminal too');
  assert.equal(r.stdout.toString(), '24 80\r\ntty\r\nxterm-256color\r\nerr\r\n', 'the terminal turns \\n into \\r\\n');
  assert.deepEqual(r.exit, { signaled: false, code: 3 });
  const own = await agent.run({ argv: ['/bin/sh', '-c', 'echo "$TERM"'], env: ['PATH=/usr/bin:/bin', 'TERM=vt100'], tty });
  assert.equal(own.stdout.toString(), 'vt100\r\n', 'a TERM of the request is kept');
  // A plain exec has no terminal.
  const plain = await agent.run({ argv: ['/bin/sh', '-c', 'test -t 1 || echo no-tty'] });
  assert.equal(plain.stdout.toString(), 'no-tty\n');
});

test('tty: stdin goes to the terminal, RESIZE changes its size, ^C interrupts the foreground', async () => {
  const { id } = await agent.start({ argv: ['/bin/sh'], tty: { rows: 24, cols: 80 }, stdin: true, env: ['PATH=/usr/bin:/bin', 'PS1=$ '] });
  const text = () => Buffer.concat(agent.frames.filter((f) => f.id === id && f.type === FrameType.STDOUT).map((f) => f.payload)).toString();
  const until = (re: RegExp, what: string) => agent.waitFor(() => re.test(text()), what).catch((err: Error) => assert.fail(`${err.message}; screen: ${JSON.stringify(text())}`));
  agent.send(FrameType.STDIN, id, Buffer.from('stty size\n'));
  await until(/24 80\r\n/, 'stty size 24 80');
  agent.send(FrameType.RESIZE, id, new PayloadWriter().u32(30).u32(100).build());
  const ok = await agent.waitFor((f) => f.id === id && (f.type === FrameType.OK || f.type === FrameType.ERROR), 'RESIZE reply');
  assert.equal(ok.type, FrameType.OK);
  agent.send(FrameType.STDIN, id, Buffer.from('stty size\n'));
  await until(/30 100\r\n/, 'stty size 30 100');
  agent.send(FrameType.STDIN, id, Buffer.from('sleep 30\n'));
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  agent.send(FrameType.STDIN, id, Buffer.from([3])); // ^C: the terminal's line discipline sends SIGINT
  await until(/\^C\r\n\$ $/, 'sleep interrupted by ^C, a new prompt');
  assert.ok(Date.now() - t0 < 3000, 'interrupted at once');
  agent.send(FrameType.STDIN, id, Buffer.from('echo status=$?\n'));
  await until(/status=130/, 'the status of the interrupted sleep');
  agent.send(FrameType.STDIN, id, Buffer.from('exit 7\n'));
  const r = await agent.finish(id);
  assert.deepEqual(r.exit, { signaled: false, code: 7 });
});

test('tty: sizes out of 1..1000 and RESIZE of an exec without a terminal are refused', async () => {
  for (const tty of [{ rows: 0, cols: 80 }, { rows: 24, cols: 1001 }]) {
    const id = nextId++;
    agent.send(FrameType.EXEC, id, encodeExec(execRequest({ tty })));
    const reply = await agent.reply(id);
    assert.equal(reply.type, FrameType.ERROR);
    assert.match(decodeError(reply.payload).message, /out of range/);
  }
  await agent.expectError(FrameType.RESIZE, new PayloadWriter().u32(10).u32(10).build(), AgentErrorCode.UNKNOWN_ID);
  await agent.expectError(FrameType.RESIZE, u32(10), AgentErrorCode.MALFORMED);
  const plain = await agent.start({ argv: ['sleep', '30'] });
  agent.send(FrameType.RESIZE, plain.id, new PayloadWriter().u32(10).u32(10).build());
  const err = await agent.waitFor((f) => f.id === plain.id && f.type === FrameType.ERROR, 'ERROR for RESIZE without a tty');
  assert.equal(decodeError(err.payload).code, AgentErrorCode.WRONG_TYPE);
  const big = await agent.start({ argv: ['sleep', '30'], tty: { rows: 5, cols: 5 } });
  agent.send(FrameType.RESIZE, big.id, new PayloadWriter().u32(1001).u32(10).build());
  const err2 = await agent.waitFor((f) => f.id === big.id && f.type === FrameType.ERROR, 'ERROR for a RESIZE too big');
  assert.equal(decodeError(err2.payload).code, AgentErrorCode.MALFORMED);
  for (const e of [plain, big]) agent.send(FrameType.KILL, e.id, u32(9));
  await agent.finish(plain.id);
  await agent.finish(big.id);
});

test('tty: a background job holding the terminal does not keep the EXIT back', async () => {
  const t0 = Date.now();
  const r = await agent.run({ argv: ['/bin/sh', '-c', 'set -m; sleep 30 & echo started; exit 4'], tty: { rows: 24, cols: 80 } });
  assert.match(r.stdout.toString(), /started/);
  assert.deepEqual(r.exit, { signaled: false, code: 4 });
  assert.ok(Date.now() - t0 < 3000, `EXIT after ${Date.now() - t0} ms`);
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

/** Output bytes (STDOUT and STDERR) the agent sent so far for exec `id`. */
function outputOf(id: number): number {
  let n = 0;
  for (const f of agent.frames) if (f.id === id && (f.type === FrameType.STDOUT || f.type === FrameType.STDERR)) n += f.payload.length;
  return n;
}

test('a flow-controlled exec sends no more output than its credit; CREDIT lets the rest through', async () => {
  const total = EXEC_WINDOW + 300_000;
  const id = nextId++;
  // Both streams count against the one credit of the exec.
  agent.send(FrameType.EXEC, id, encodeExec(execRequest({ argv: ['/bin/sh', '-c', `head -c ${total - 1000} /dev/zero; head -c 1000 /dev/zero >&2`], flowControl: true })));
  const started = await agent.reply(id);
  assert.equal(started.type, FrameType.STARTED);
  assert.equal(started.payload.length, 8, 'STARTED says flow control is on');
  assert.equal(started.payload.readUInt32BE(4), EXEC_WINDOW);
  await agent.waitFor(() => outputOf(id) >= EXEC_WINDOW, 'the first window of output');
  // A PING answered means the agent went round its loop: whatever it was going to send is out.
  await agent.pingOk();
  assert.equal(outputOf(id), EXEC_WINDOW, 'exactly the credit, not a byte more');

  agent.send(FrameType.CREDIT, id, u32(100_000));
  await agent.waitFor(() => outputOf(id) >= EXEC_WINDOW + 100_000, 'output for the new credit');
  await agent.pingOk();
  assert.equal(outputOf(id), EXEC_WINDOW + 100_000);
  assert.ok(!agent.frames.some((f) => f.id === id && f.type === FrameType.EXIT), 'no EXIT while output is owed');

  // The end of a pipe shows as a read that returns nothing, and the agent reads only with credit
  // left: the last grant leaves room beyond the last byte.
  agent.send(FrameType.CREDIT, id, u32(200_000 + 1));
  const r = await agent.finish(id);
  assert.equal(r.stdout.length + r.stderr.length, total);
  assert.equal(r.stderr.length, 1000);
  assert.deepEqual(r.exit, { signaled: false, code: 0 });
});

test('an exec out of credit holds back only itself: other execs and requests go on', async () => {
  const stuck = nextId++;
  agent.send(FrameType.EXEC, stuck, encodeExec(execRequest({ argv: ['yes'], flowControl: true })));
  await agent.waitFor(() => outputOf(stuck) >= EXEC_WINDOW, 'the first window of output');
  const quick = await agent.run({ argv: ['echo', 'not held'], flowControl: true });
  assert.equal(quick.stdout.toString(), 'not held\n');
  await agent.pingOk();
  assert.equal(outputOf(stuck), EXEC_WINDOW);
  agent.send(FrameType.KILL, stuck, u32(9));
  // A process killed with a full pipe still needs its pipe drained before EXIT: HOST_HELLO (a
  // new host, which knows nothing of this exec) lets the rest flow without credit.
  agent.send(FrameType.HOST_HELLO, 0);
  const r = await agent.finish(stuck);
  assert.deepEqual(r.exit, { signaled: true, code: 9 });
});

test('CREDIT and HOST_HELLO: malformed ones are ERROR 1, credit for an unknown id is ignored', async () => {
  await agent.expectError(FrameType.CREDIT, Buffer.alloc(3), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.HOST_HELLO, Buffer.alloc(1), AgentErrorCode.MALFORMED);
  const unknown = nextId++;
  agent.send(FrameType.CREDIT, unknown, u32(4096)); // an exec that ended while its credit was on the way
  await agent.pingOk();
  assert.deepEqual(agent.frames.filter((f) => f.id === unknown), [], 'no reply');
  // Without the flag the agent sends as before: a 4-byte STARTED, output not limited.
  const legacy = await agent.run({ argv: ['head', '-c', String(EXEC_WINDOW * 2), '/dev/zero'] });
  assert.equal(legacy.frames[0]!.payload.length, 4);
  assert.equal(legacy.stdout.length, EXEC_WINDOW * 2);
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
  const types = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x00, 0x09, 0x14, 0x15, 0x55, 0x80, 0x8f, 0xff];
  const fuzzed: { id: number; replies: number }[] = [];
  for (let i = 0; i < 300; i++) {
    const id = 1_000_000 + i;
    const type = types[int(types.length)]!;
    const payload = Buffer.alloc(int(4) === 0 ? int(5000) : type === FrameType.CREDIT && int(2) === 0 ? 4 : int(64));
    for (let j = 0; j < payload.length; j++) payload[j] = int(256);
    if (int(3) === 0 && payload.length >= 16) payload.writeUInt32BE(int(3), 12); // sometimes a plausible argc
    // Well-formed CREDIT (for an id that is no exec) and HOST_HELLO have no reply; everything else one.
    const silent = (type === FrameType.CREDIT && payload.length === 4) || (type === FrameType.HOST_HELLO && payload.length === 0);
    fuzzed.push({ id, replies: silent ? 0 : 1 });
    const parts = [encodeFrame(type, id, payload)];
    if (int(5) === 0) parts.unshift(Buffer.from(Array.from({ length: int(40) }, () => int(0xce))));
    agent.raw(Buffer.concat(parts));
  }
  await agent.pingOk();
  for (const { id, replies: expected } of fuzzed) {
    const replies = agent.frames.filter((f) => f.id === id && !STREAM_TYPES.has(f.type));
    assert.equal(replies.length, expected, `frame ${id} got ${expected} replies`);
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

// ------------------------------------------------------------------------------------------
// Files: PUT_FILE, FILE_DATA, FILE_END, MKDIR, SYMLINK, READ_FILE, LIST_DIR, STAT, CANCEL

const asRoot = process.getuid?.() === 0;

/** A fresh directory of its own for each test. */
function scratch(name: string): string {
  return mkdtempSync(join(workDir, `${name}-`));
}

/** Entries of dir that look like the agent's temporary files. */
function leftovers(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.includes('.cell-'));
}

/** Sends a whole upload (PUT_FILE, FILE_DATA chunks, FILE_END) and returns the reply. */
async function put(path: string, data: Buffer | string, meta: PutFileMeta = { mode: 0o644 }, chunk = 65536): Promise<Frame> {
  const id = nextId++;
  const bytes = Buffer.from(data);
  agent.send(FrameType.PUT_FILE, id, encodePutFile(path, meta));
  for (let off = 0; off < bytes.length; off += chunk) agent.send(FrameType.FILE_DATA, id, bytes.subarray(off, off + chunk));
  agent.send(FrameType.FILE_END, id, encodeFileEnd(bytes.length));
  return agent.reply(id, 20_000);
}

async function putOk(path: string, data: Buffer | string, meta?: PutFileMeta): Promise<void> {
  const reply = await put(path, data, meta);
  if (reply.type === FrameType.ERROR) assert.fail(`PUT_FILE ${path}: ${decodeError(reply.payload).message}`);
  assert.equal(reply.type, FrameType.OK);
}

/** A READ_FILE: its DATA chunks and its final reply. */
async function read(path: string, maxBytes = 0, timeoutMs = 20_000) {
  const id = nextId++;
  agent.send(FrameType.READ_FILE, id, encodeReadFile(path, maxBytes));
  const reply = await agent.reply(id, timeoutMs);
  const chunks = agent.frames.filter((f) => f.id === id && f.type === FrameType.DATA).map((f) => f.payload);
  return { reply, chunks, data: Buffer.concat(chunks) };
}

/** A PUT_FILE that must fail with `code`; the FILE_END after it is swallowed (no second reply). */
async function expectPutError(payload: Buffer, code: number): Promise<string> {
  const id = nextId++;
  agent.send(FrameType.PUT_FILE, id, payload);
  agent.send(FrameType.FILE_DATA, id, Buffer.from('ignored'));
  agent.send(FrameType.FILE_END, id, encodeFileEnd(7));
  const reply = await agent.reply(id);
  assert.equal(reply.type, FrameType.ERROR, 'ERROR expected');
  const err = decodeError(reply.payload);
  assert.equal(err.code, code, `error code (message: ${err.message})`);
  await agent.pingOk();
  assert.equal(agent.frames.filter((f) => f.id === id).length, 1, 'one reply only');
  return err.message;
}

test('PUT_FILE writes the bytes with the mode, owner and mtime asked for, creating parents', async () => {
  const dir = scratch('put');
  const target = join(dir, 'a', 'b', 'c', 'file.txt');
  const mtime = new Date('2001-02-03T04:05:06.789Z');
  const owner = asRoot ? { uid: 1234, gid: 5678 } : { uid: process.getuid!(), gid: process.getgid!() };
  await putOk(target, 'hello files\n', { mode: 0o4751, mtime, ...owner });
  assert.equal(readFileSync(target, 'utf8'), 'hello files\n');
  const st = statSync(target);
  assert.equal(st.mode & 0o7777, asRoot ? 0o4751 : st.mode & 0o7777);
  assert.equal(st.mode & 0o777, 0o751);
  assert.deepEqual([st.uid, st.gid], [owner.uid, owner.gid]);
  assert.equal(st.mtimeMs, mtime.getTime());
  for (const parent of ['a', 'a/b', 'a/b/c']) {
    const p = statSync(join(dir, parent));
    assert.ok(p.isDirectory());
    assert.equal(p.mode & 0o7777, 0o755, `${parent} is 0755`);
  }
  // An empty file, and one without an mtime (it gets the time it was written).
  await putOk(join(dir, 'empty'), '', { mode: 0o600 });
  assert.equal(statSync(join(dir, 'empty')).size, 0);
  assert.ok(Math.abs(statSync(join(dir, 'empty')).mtimeMs - Date.now()) < 60_000);
  assert.deepEqual(leftovers(dir), []);
});

test('PUT_FILE replaces an existing file atomically (a new inode renamed over it)', async () => {
  const dir = scratch('replace');
  const target = join(dir, 'config');
  const keep = join(dir, 'old-link');
  writeFileSync(target, 'old');
  linkSync(target, keep);
  await putOk(target, 'new contents');
  assert.equal(readFileSync(target, 'utf8'), 'new contents');
  assert.equal(readFileSync(keep, 'utf8'), 'old', 'the old inode was never written to');
  // Over a symlink: the link itself is replaced, its target is left alone.
  symlinkSync(keep, join(dir, 'link'));
  await putOk(join(dir, 'link'), 'a file now');
  assert.ok(lstatSync(join(dir, 'link')).isFile());
  assert.equal(readFileSync(keep, 'utf8'), 'old');
  assert.deepEqual(leftovers(dir), []);
});

test('a 5 MiB file goes up in 64 KiB frames and comes back unchanged from READ_FILE', async () => {
  const dir = scratch('big');
  const data = Buffer.alloc(5 * 1024 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + (i >> 16)) & 0xff;
  const path = join(dir, 'blob.bin');
  await putOk(path, data, { mode: 0o640 });
  assert.ok(readFileSync(path).equals(data));
  const r = await read(path);
  assert.equal(r.reply.type, FrameType.OK);
  assert.equal(r.reply.payload.readBigUInt64BE(0), BigInt(data.length), 'OK carries the size');
  assert.ok(r.data.equals(data));
  for (const c of r.chunks) assert.ok(c.length <= 65536, `chunk of ${c.length} bytes`);
  // Frames smaller than the limit are fine too.
  const small = await put(join(dir, 'pieces'), data.subarray(0, 100_000), { mode: 0o644 }, 1000);
  assert.equal(small.type, FrameType.OK);
  assert.ok(readFileSync(join(dir, 'pieces')).equals(data.subarray(0, 100_000)));
});

test('READ_FILE refuses what is not a regular file, a missing path and a file over maxBytes', async () => {
  const dir = scratch('read');
  writeFileSync(join(dir, 'f'), 'x'.repeat(100));
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  const cases: [string, number, number, RegExp][] = [
    [join(dir, 'missing'), 0, AgentErrorCode.NOT_FOUND, /stat .*missing: No such file/],
    [dir, 0, AgentErrorCode.WRONG_TYPE, /is a directory, not a regular file/],
    [join(dir, 'fifo'), 0, AgentErrorCode.WRONG_TYPE, /is a FIFO/], // and the agent did not block opening it
    [join(dir, 'f', 'below'), 0, AgentErrorCode.WRONG_TYPE, /Not a directory/],
    [join(dir, 'f'), 99, AgentErrorCode.LIMIT, /100 bytes, over the limit of 99/],
    ['relative/path', 0, AgentErrorCode.BAD_PATH, /not absolute/],
    ['', 0, AgentErrorCode.BAD_PATH, /empty/],
  ];
  for (const [path, max, code, message] of cases) {
    const r = await read(path, max);
    assert.equal(r.reply.type, FrameType.ERROR, path);
    const err = decodeError(r.reply.payload);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, message);
    assert.equal(r.chunks.length, 0);
  }
  const exact = await read(join(dir, 'f'), 100);
  assert.equal(exact.data.toString(), 'x'.repeat(100));
  await agent.pingOk();
});

test('MKDIR creates directories with mode and owner, and only updates an existing one', async () => {
  const dir = scratch('mkdir');
  const owner = asRoot ? { uid: 42, gid: 43 } : { uid: process.getuid!(), gid: process.getgid!() };
  const nested = join(dir, 'x', 'y', 'z');
  assert.equal((await agent.request(FrameType.MKDIR, encodeMkdir(nested, { mode: 0o1770, ...owner }))).type, FrameType.OK);
  let st = statSync(nested);
  assert.ok(st.isDirectory());
  assert.equal(st.mode & 0o7777, 0o1770);
  assert.deepEqual([st.uid, st.gid], [owner.uid, owner.gid]);
  assert.equal(statSync(join(dir, 'x', 'y')).mode & 0o7777, 0o755);

  writeFileSync(join(nested, 'inside'), 'kept');
  assert.equal((await agent.request(FrameType.MKDIR, encodeMkdir(`${nested}/`, { mode: 0o700, ...owner }))).type, FrameType.OK);
  st = statSync(nested);
  assert.equal(st.mode & 0o7777, 0o700);
  assert.equal(readFileSync(join(nested, 'inside'), 'utf8'), 'kept', 'an existing directory keeps its contents');

  const msg = await agent.expectError(FrameType.MKDIR, encodeMkdir(join(nested, 'inside'), { mode: 0o755 }), AgentErrorCode.WRONG_TYPE);
  assert.match(msg, /inside: exists and is not a directory/);
  await agent.expectError(FrameType.MKDIR, encodeMkdir('x/y', { mode: 0o755 }), AgentErrorCode.BAD_PATH);
  await agent.expectError(FrameType.MKDIR, new PayloadWriter().u32(0o10000).u32(0).u32(0).string(join(dir, 'm')).build(), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.MKDIR, u32(0o755), AgentErrorCode.MALFORMED);
});

test('SYMLINK creates a link or atomically replaces a file or link with one', async () => {
  const dir = scratch('symlink');
  const link = join(dir, 'deep', 'link');
  assert.equal((await agent.request(FrameType.SYMLINK, encodeSymlink(link, '../target'))).type, FrameType.OK);
  assert.equal(readlinkSync(link), '../target');
  assert.equal((await agent.request(FrameType.SYMLINK, encodeSymlink(link, '/elsewhere'))).type, FrameType.OK);
  assert.equal(readlinkSync(link), '/elsewhere');
  writeFileSync(join(dir, 'file'), 'a file');
  const owner = asRoot ? { uid: 7, gid: 8 } : {};
  assert.equal((await agent.request(FrameType.SYMLINK, encodeSymlink(join(dir, 'file'), 'deep/link', owner))).type, FrameType.OK);
  const st = lstatSync(join(dir, 'file'));
  assert.ok(st.isSymbolicLink());
  if (asRoot) assert.deepEqual([st.uid, st.gid], [7, 8]);

  mkdirSync(join(dir, 'adir'));
  const msg = await agent.expectError(FrameType.SYMLINK, encodeSymlink(join(dir, 'adir'), 'x'), AgentErrorCode.WRONG_TYPE);
  assert.match(msg, /^rename .*adir: Is a directory/);
  await agent.expectError(FrameType.SYMLINK, encodeSymlink(join(dir, 'l2'), ''), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SYMLINK, encodeSymlink(join(dir, 'l2'), Buffer.from('a\0b') as unknown as string), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SYMLINK, encodeSymlink('/', 'x'), AgentErrorCode.BAD_PATH);
  await agent.expectError(FrameType.SYMLINK, encodeSymlink(`${dir}/..`, 'x'), AgentErrorCode.BAD_PATH);
  assert.deepEqual(leftovers(dir), []);
  assert.deepEqual(leftovers(join(dir, 'deep')), []);
});

test('STAT reports kind, mode, owner, size, mtime and link target (lstat, or stat with the follow flag)', async () => {
  const dir = scratch('stat');
  writeFileSync(join(dir, 'f'), '12345');
  chmodSync(join(dir, 'f'), 0o640);
  symlinkSync('f', join(dir, 'l'));
  const stat = async (path: string, follow = false) => {
    const reply = await agent.request(FrameType.STAT, encodeStat(path, follow));
    assert.equal(reply.type, FrameType.OK, reply.type === FrameType.ERROR ? decodeError(reply.payload).message : '');
    return decodeStat(reply.payload);
  };
  const f = await stat(join(dir, 'f'));
  const host = statSync(join(dir, 'f'));
  assert.deepEqual(f, { kind: 'file', mode: 0o640, uid: host.uid, gid: host.gid, size: 5, mtimeMs: host.mtimeMs, linkTarget: '' });
  assert.equal((await stat(dir)).kind, 'directory');
  assert.equal((await stat('/')).kind, 'directory');
  const l = await stat(join(dir, 'l'));
  assert.equal(l.kind, 'symlink');
  assert.equal(l.linkTarget, 'f');
  assert.equal((await stat(join(dir, 'l'), true)).kind, 'file');
  assert.equal((await stat('/dev/null')).kind, 'char-device');
  const msg = await agent.expectError(FrameType.STAT, encodeStat(join(dir, 'nope'), false), AgentErrorCode.NOT_FOUND);
  assert.match(msg, /^lstat .*nope: No such file or directory$/);
  await agent.expectError(FrameType.STAT, new PayloadWriter().u32(2).string(dir).build(), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.STAT, encodeStat('nope', false), AgentErrorCode.BAD_PATH);
});

test('LIST_DIR streams every entry of a big directory in DATA frames, then OK with the count', async () => {
  const dir = scratch('list');
  const names = Array.from({ length: 2000 }, (_, i) => `${String(i).padStart(4, '0')}-${'n'.repeat(120)}`);
  for (const n of names) writeFileSync(join(dir, n), n.slice(0, 4));
  mkdirSync(join(dir, 'sub'));
  symlinkSync('/some/where', join(dir, 'link'));
  execFileSync('mkfifo', [join(dir, 'fifo')]);
  const id = nextId++;
  agent.send(FrameType.LIST_DIR, id, encodeListDir(dir));
  const reply = await agent.reply(id, 20_000);
  assert.equal(reply.type, FrameType.OK);
  assert.equal(reply.payload.readUInt32BE(0), names.length + 3);
  const data = agent.frames.filter((f) => f.id === id && f.type === FrameType.DATA);
  assert.ok(data.length >= 4, `${data.length} DATA frames`);
  for (const f of data) assert.ok(f.payload.length <= 65536);
  const entries = data.flatMap((f) => decodeDirEntries(f.payload));
  assert.deepEqual(entries.map((e) => e.name).sort(), [...names, 'fifo', 'link', 'sub'].sort());
  const byName = new Map(entries.map((e) => [e.name, e]));
  assert.equal(byName.get(names[7]!)?.kind, 'file');
  assert.equal(byName.get(names[7]!)?.size, 4);
  assert.equal(byName.get('sub')?.kind, 'directory');
  assert.deepEqual([byName.get('link')?.kind, byName.get('link')?.linkTarget], ['symlink', '/some/where']);
  assert.equal(byName.get('fifo')?.kind, 'fifo');

  await agent.expectError(FrameType.LIST_DIR, encodeListDir(join(dir, names[0]!)), AgentErrorCode.WRONG_TYPE);
  await agent.expectError(FrameType.LIST_DIR, encodeListDir(join(dir, 'missing')), AgentErrorCode.NOT_FOUND);
  await agent.expectError(FrameType.LIST_DIR, Buffer.concat([encodeListDir(dir), Buffer.from([1])]), AgentErrorCode.MALFORMED);
});

test('a failed upload answers once, swallows its remaining frames and leaves the target alone', async () => {
  const dir = scratch('fail');
  writeFileSync(join(dir, 'file'), 'original');
  mkdirSync(join(dir, 'adir'));
  // A parent that is a file: refused at PUT_FILE, naming the call and the path.
  let msg = await expectPutError(encodePutFile(join(dir, 'file', 'x'), { mode: 0o644 }), AgentErrorCode.WRONG_TYPE);
  assert.match(msg, /^mkstemp .*file\/\.x\.cell-.*: Not a directory$/);
  // A directory where the file should go: refused at FILE_END (rename).
  let reply = await put(join(dir, 'adir'), 'data');
  assert.equal(decodeError(reply.payload).code, AgentErrorCode.WRONG_TYPE);
  assert.match(decodeError(reply.payload).message, /^rename .*adir: Is a directory$/);
  assert.ok(statSync(join(dir, 'adir')).isDirectory());

  // FILE_END declaring a size other than what arrived.
  const id = nextId++;
  agent.send(FrameType.PUT_FILE, id, encodePutFile(join(dir, 'file'), { mode: 0o644 }));
  agent.send(FrameType.FILE_DATA, id, Buffer.from('0123456789'));
  agent.send(FrameType.FILE_END, id, encodeFileEnd(11));
  reply = await agent.reply(id);
  assert.equal(decodeError(reply.payload).code, AgentErrorCode.MALFORMED);
  assert.match(decodeError(reply.payload).message, /11 bytes declared, 10 received/);

  // A FILE_DATA over 64 KiB ends the upload at once; the FILE_END after it is swallowed.
  const big = nextId++;
  agent.send(FrameType.PUT_FILE, big, encodePutFile(join(dir, 'file'), { mode: 0o644 }));
  agent.send(FrameType.FILE_DATA, big, Buffer.alloc(65537));
  agent.send(FrameType.FILE_END, big, encodeFileEnd(65537));
  reply = await agent.reply(big);
  assert.match(decodeError(reply.payload).message, /over 64 KiB/);
  await agent.pingOk();
  assert.equal(agent.frames.filter((f) => f.id === big).length, 1);

  // CANCEL in the middle: OK, and nothing changes.
  const cancelled = nextId++;
  agent.send(FrameType.PUT_FILE, cancelled, encodePutFile(join(dir, 'file'), { mode: 0o644 }));
  agent.send(FrameType.FILE_DATA, cancelled, Buffer.from('half'));
  agent.send(FrameType.CANCEL, cancelled);
  assert.equal((await agent.reply(cancelled)).type, FrameType.OK);
  await agent.expectError(FrameType.FILE_DATA, undefined, AgentErrorCode.UNKNOWN_ID);

  assert.equal(readFileSync(join(dir, 'file'), 'utf8'), 'original');
  assert.deepEqual(leftovers(dir), []);
});

test('file frames with bad payloads or unknown ids get an ERROR and change nothing', async () => {
  const dir = scratch('garbled');
  const target = join(dir, 't');
  const good = encodePutFile(target, { mode: 0o644 });
  await expectPutError(good.subarray(0, 10), AgentErrorCode.MALFORMED);
  await expectPutError(good.subarray(0, good.length - 1), AgentErrorCode.MALFORMED);
  await expectPutError(Buffer.concat([good, Buffer.from([0])]), AgentErrorCode.MALFORMED);
  await expectPutError(encodePutFile(`${dir}/a\0b`, { mode: 0o644 }), AgentErrorCode.MALFORMED);
  await expectPutError(new PayloadWriter().u32(0).u32(0o10000).u32(0).u32(0).i64(0n).u32(0).string(target).build(), AgentErrorCode.MALFORMED);
  await expectPutError(new PayloadWriter().u32(4).u32(0o644).u32(0).u32(0).i64(0n).u32(0).string(target).build(), AgentErrorCode.MALFORMED);
  await expectPutError(new PayloadWriter().u32(1).u32(0o644).u32(0).u32(0).i64(0n).u32(2e9).string(target).build(), AgentErrorCode.MALFORMED);
  for (const path of ['relative', '', '/', `${dir}/.`, `${dir}/..`, `/${'x'.repeat(5000)}`]) {
    await expectPutError(encodePutFile(path, { mode: 0o644 }), AgentErrorCode.BAD_PATH);
  }
  await agent.expectError(FrameType.FILE_DATA, Buffer.from('x'), AgentErrorCode.UNKNOWN_ID);
  await agent.expectError(FrameType.FILE_END, encodeFileEnd(0), AgentErrorCode.UNKNOWN_ID);
  await agent.expectError(FrameType.CANCEL, undefined, AgentErrorCode.UNKNOWN_ID);
  await agent.expectError(FrameType.READ_FILE, u32(0), AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.STAT, undefined, AgentErrorCode.MALFORMED);
  await agent.expectError(FrameType.SYMLINK, u32(0), AgentErrorCode.MALFORMED);
  // FILE_DATA for a running exec's id is not an upload.
  const { id } = await agent.start({ argv: ['sleep', '100'] });
  agent.send(FrameType.FILE_DATA, id, Buffer.from('x'));
  const notUpload = await agent.waitFor((f) => f.id === id && f.type === FrameType.ERROR, 'ERROR for FILE_DATA on an exec id');
  assert.equal(decodeError(notUpload.payload).code, AgentErrorCode.UNKNOWN_ID);
  agent.send(FrameType.KILL, id, u32(9));
  await agent.finish(id);

  // A second PUT_FILE on an upload's id is a duplicate; the first upload goes on.
  const dup = nextId++;
  agent.send(FrameType.PUT_FILE, dup, good);
  agent.send(FrameType.PUT_FILE, dup, good);
  const dupErr = await agent.reply(dup);
  assert.equal(decodeError(dupErr.payload).code, AgentErrorCode.DUPLICATE_ID);
  agent.send(FrameType.FILE_DATA, dup, Buffer.from('first'));
  agent.send(FrameType.FILE_END, dup, encodeFileEnd(5));
  await agent.waitFor((f) => f.id === dup && f.type === FrameType.OK, 'OK of the first upload');
  assert.equal(readFileSync(target, 'utf8'), 'first');
  assert.deepEqual(readdirSync(dir), ['t']);
  await agent.pingOk();
});

test('32 uploads may be open at once; the 33rd is ERROR 6', async () => {
  const dir = scratch('limit');
  const ids = Array.from({ length: 32 }, () => nextId++);
  for (const id of ids) agent.send(FrameType.PUT_FILE, id, encodePutFile(join(dir, `f${id}`), { mode: 0o644 }));
  await agent.expectError(FrameType.PUT_FILE, encodePutFile(join(dir, 'one-too-many'), { mode: 0o644 }), AgentErrorCode.LIMIT);
  for (const id of ids) agent.send(FrameType.CANCEL, id);
  for (const id of ids) assert.equal((await agent.reply(id)).type, FrameType.OK);
  assert.deepEqual(readdirSync(dir), []);
  await putOk(join(dir, 'after'), 'slots are free again');
});

test('a host that stops reading pauses READ_FILE instead of filling the agent memory', async () => {
  const dir = scratch('slow-reader');
  const path = join(dir, 'sparse');
  const total = 48 * 1024 * 1024;
  execFileSync('truncate', ['-s', String(total), path]);
  agent.proc.stdout.pause();
  const id = nextId++;
  agent.send(FrameType.READ_FILE, id, encodeReadFile(path));
  await new Promise((r) => setTimeout(r, 700));
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${agent.proc.pid}/status`, 'utf8'))?.[1]);
  agent.proc.stdout.resume();
  assert.ok(rssKb < 16 * 1024, `agent RSS ${rssKb} kB while the host was not reading`);
  const reply = await agent.reply(id, 30_000);
  assert.equal(reply.type, FrameType.OK);
  const received = agent.frames.filter((f) => f.id === id && f.type === FrameType.DATA).reduce((n, f) => n + f.payload.length, 0);
  assert.equal(received, total);
  // Drop the 48 MiB of frames: later tests scan agent.frames.
  for (let i = agent.frames.length - 1; i >= 0; i--) if (agent.frames[i]!.id === id && agent.frames[i]!.type === FrameType.DATA) agent.frames.splice(i, 1);
});

test('fuzz: mutated file frames get exactly one reply each and leave no temporary files', async () => {
  const dir = scratch('fuzz');
  mkdirSync(join(dir, 'd'));
  writeFileSync(join(dir, 'f'), 'fuzz');
  const rand = prng(0xf11e);
  const int = (n: number) => Math.floor(rand() * n);
  // Only fixed fields are mutated, never a path: a shortened path could name something outside dir.
  const requests: [number, Buffer, number][] = [
    [FrameType.PUT_FILE, encodePutFile(join(dir, 'p'), { mode: 0o644, mtime: new Date() }), 28],
    [FrameType.MKDIR, encodeMkdir(join(dir, 'd', 'm'), { mode: 0o755 }), 12],
    [FrameType.SYMLINK, encodeSymlink(join(dir, 's'), 'target'), 8],
    [FrameType.READ_FILE, encodeReadFile(join(dir, 'f')), 8],
    [FrameType.LIST_DIR, encodeListDir(dir), 0],
    [FrameType.STAT, encodeStat(join(dir, 'f'), true), 4],
  ];
  const ids: number[] = [];
  for (let i = 0; i < 400; i++) {
    const [type, payload, fixed] = requests[int(requests.length)]!;
    let p = Buffer.from(payload);
    const how = int(3);
    if (how === 0) p = p.subarray(0, int(p.length));
    else if (how === 1) p = Buffer.concat([p, Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256)))]);
    else if (fixed > 0) p[int(fixed)] = int(256);
    const id = 2_000_000 + i;
    ids.push(id);
    agent.send(type, id, p);
    if (type === FrameType.PUT_FILE) {
      agent.send(FrameType.FILE_DATA, id, Buffer.from('data'));
      agent.send(FrameType.FILE_END, id, encodeFileEnd(4));
    }
    // In batches: more than 32 transfers at once would be refused (ERROR 6), as they should.
    if (i % 16 === 15) for (const done of ids.slice(-16)) await agent.reply(done, 10_000);
  }
  await agent.pingOk();
  for (const id of ids) {
    const replies = agent.frames.filter((f) => f.id === id && !STREAM_TYPES.has(f.type));
    assert.equal(replies.length, 1, `request ${id} got exactly one reply: ${replies.map((f) => f.type.toString(16) + ' ' + (f.type === FrameType.ERROR ? decodeError(f.payload).message : '')).join('; ')}`);
  }
  assert.deepEqual(leftovers(dir), []);
  assert.deepEqual(leftovers(join(dir, 'd')), []);
  assert.ok(agent.alive);
});

test('end of input in the middle of an upload: the temporary file is removed', async () => {
  const dir = scratch('eof');
  const other = new Agent(agentBin);
  try {
    await other.pingOk();
    other.send(FrameType.PUT_FILE, 1, encodePutFile(join(dir, 'never'), { mode: 0o644 }));
    other.send(FrameType.FILE_DATA, 1, Buffer.from('partial'));
    await other.pingOk();
    assert.equal(leftovers(dir).length, 1, 'the upload is in progress');
    other.proc.stdin.end();
    assert.deepEqual(await other.exited, { code: 0, signal: null });
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    if (other.alive) other.proc.kill('SIGKILL');
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
