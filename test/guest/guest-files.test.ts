/**
 * Host-side file copying (src/agent file requests, src/engine/guest-files.ts and cp-targets.ts)
 * against the real guest agent run as `agent --stdio` over a unix socket: in that mode the agent's
 * file operations act on this machine, so temporary directories stand in for the guest.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import { FrameDecoder, FrameType, encodeFrame } from '../../src/agent/frame.js';
import { copyFromGuest, copyIntoGuest } from '../../src/engine/guest-files.js';
import { copyIn, copyOut } from '../../src/engine/cp-targets.js';
import { CellError } from '../../src/domain/errors.js';
import { ensureAgent } from '../../src/host/agent-build.js';

let work: string;
let agentBin: string;
let agentProc: ChildProcess;
let agent: AgentClient;

/** An `agent --stdio` whose stdin and stdout are one end of a unix socket; the client holds the other. */
async function startAgent(): Promise<void> {
  const server = net.createServer();
  const sock = join(work, 'agent.sock');
  server.listen(sock);
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const childEnd = net.connect(sock);
  await once(childEnd, 'connect');
  const [ours] = await accepted;
  agentProc = spawn(agentBin, ['--stdio'], { stdio: [childEnd, childEnd, 'inherit'] });
  childEnd.destroy();
  server.close();
  agent = new AgentClient(ours);
  await agent.waitReady(Date.now() + 5000);
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'cell-guest-files-'));
  agentBin = (await ensureAgent({ cacheDir: join(work, 'cache') })).path;
  await startAgent();
});

after(async () => {
  agent?.close();
  if (agentProc && agentProc.exitCode === null) {
    agentProc.kill('SIGKILL');
    await once(agentProc, 'exit');
  }
  rmSync(work, { recursive: true, force: true });
});

const scratch = (name: string) => mkdtempSync(join(work, `${name}-`));
const pattern = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + (i >> 10)) & 0xff));

/** A sample tree: files with modes and a fixed mtime, nested and empty directories, symlinks. */
function sampleTree(root: string): void {
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'empty'));
  mkdirSync(join(root, 'a', 'b', 'c'), { recursive: true });
  writeFileSync(join(root, 'README'), 'hello\n');
  writeFileSync(join(root, 'bin', 'tool'), '#!/bin/sh\necho tool\n');
  chmodSync(join(root, 'bin', 'tool'), 0o755);
  writeFileSync(join(root, 'a', 'b', 'c', 'secret'), 'shh');
  chmodSync(join(root, 'a', 'b', 'c', 'secret'), 0o600);
  chmodSync(join(root, 'a', 'b'), 0o750);
  writeFileSync(join(root, 'big.bin'), pattern(3 * 1024 * 1024 + 17));
  symlinkSync('bin/tool', join(root, 'tool-link'));
  symlinkSync('/nowhere', join(root, 'dangling'));
  utimesSync(join(root, 'README'), new Date('2020-01-02T03:04:05Z'), new Date('2020-01-02T03:04:05Z'));
}

/** Relative path -> description of every entry (kind, mode, content or link), for comparing trees. */
function describeTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string, rel: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const key = rel ? `${rel}/${name}` : name;
      const st = lstatSync(path);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isSymbolicLink()) out[key] = `link -> ${readlinkSync(path)}`;
      else if (st.isDirectory()) {
        out[key] = `dir ${mode}`;
        walk(path, key);
      } else out[key] = `file ${mode} ${readFileSync(path).toString('base64').slice(0, 40)} ${st.size}`;
    }
  };
  walk(root, '');
  return out;
}

/** File mtimes agree to the millisecond (what a copy keeps). */
function assertSameFileTimes(a: string, b: string): void {
  for (const [rel, what] of Object.entries(describeTree(a))) {
    if (!what.startsWith('file')) continue;
    const [ta, tb] = [statSync(join(a, rel)).mtimeMs, statSync(join(b, rel)).mtimeMs];
    assert.ok(Math.abs(ta - tb) < 1, `${rel}: mtime ${ta} vs ${tb}`);
  }
}

async function rejectsWith(promise: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof CellError, `a CellError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, message);
    return true;
  });
}

test('copyIntoGuest copies a tree: contents, modes, file mtimes, empty directories, symlinks', async () => {
  const src = scratch('src');
  sampleTree(src);
  const guest = scratch('guest');
  const stats = await copyIntoGuest(agent, src, join(guest, 'srv', 'app'));
  assert.deepEqual(describeTree(join(guest, 'srv', 'app')), describeTree(src));
  assertSameFileTimes(join(guest, 'srv', 'app'), src);
  assert.deepEqual(stats, { files: 4, directories: 6, symlinks: 2, bytes: 6 + 20 + 3 + 3 * 1024 * 1024 + 17 });
  const st = statSync(join(guest, 'srv', 'app', 'README'));
  assert.deepEqual([st.uid, st.gid], [0, 0], 'owned by root');
  // Again, over the first copy: files are replaced, the directories merged into.
  writeFileSync(join(src, 'README'), 'changed\n');
  writeFileSync(join(guest, 'srv', 'app', 'extra'), 'kept');
  await copyIntoGuest(agent, src, join(guest, 'srv', 'app'));
  assert.equal(readFileSync(join(guest, 'srv', 'app', 'README'), 'utf8'), 'changed\n');
  assert.equal(readFileSync(join(guest, 'srv', 'app', 'extra'), 'utf8'), 'kept');
  // A single file, and a uid/gid of choice.
  await copyIntoGuest(agent, join(src, 'bin', 'tool'), join(guest, 'one', 'tool'), { uid: 1000, gid: 1001 });
  const tool = statSync(join(guest, 'one', 'tool'));
  assert.deepEqual([tool.mode & 0o7777, tool.uid, tool.gid], [0o755, 1000, 1001]);
});

test('copyIntoGuest refuses a socket or FIFO anywhere in the tree before copying anything', async () => {
  const src = scratch('special');
  writeFileSync(join(src, 'ok'), 'fine');
  mkdirSync(join(src, 'sub'));
  execFileSync('mkfifo', [join(src, 'sub', 'pipe')]);
  const guest = scratch('guest-special');
  await rejectsWith(copyIntoGuest(agent, src, join(guest, 'dest')), 'invalid_argument', /sub\/pipe: it is a FIFO/);
  assert.deepEqual(readdirSync(guest), [], 'nothing was copied');
  await rejectsWith(copyIntoGuest(agent, join(src, 'missing'), join(guest, 'dest')), 'not_found', /missing \(host\): no such file/);
  await rejectsWith(copyIntoGuest(agent, src, 'relative/dest'), 'invalid_argument', /must be absolute/);
});

test('copyFromGuest copies a tree out; set-user-ID bits are dropped; nothing is left on failure', async () => {
  const guest = scratch('guest-out');
  sampleTree(guest);
  writeFileSync(join(guest, 'suid'), 'x');
  chmodSync(join(guest, 'suid'), 0o4755);
  const host = scratch('host-out');
  const stats = await copyFromGuest(agent, guest, join(host, 'copy'));
  const expected = describeTree(guest);
  expected.suid = expected.suid!.replace('file 4755', 'file 755');
  assert.deepEqual(describeTree(join(host, 'copy')), expected);
  assertSameFileTimes(join(host, 'copy'), guest);
  assert.equal(stats.files, 5);
  assert.equal(stats.symlinks, 2);
  assert.equal(statSync(join(host, 'copy', 'a', 'b')).mode & 0o7777, 0o750);

  await rejectsWith(copyFromGuest(agent, guest, join(host, 'copy')), 'conflict', /already exists/);
  await rejectsWith(copyFromGuest(agent, join(guest, 'nope'), join(host, 'x')), 'not_found', /nope: No such file/);
  await rejectsWith(copyFromGuest(agent, guest, join(host, 'no-such-dir', 'x')), 'not_found', /no-such-dir does not exist/);
  execFileSync('mkfifo', [join(guest, 'a', 'fifo')]);
  await rejectsWith(copyFromGuest(agent, guest, join(host, 'second')), 'invalid_argument', /a\/fifo: it is a fifo/);
  assert.deepEqual(readdirSync(host), ['copy'], 'the failed copy left nothing, not even its temporary directory');

  // A single file replaces an existing file atomically.
  writeFileSync(join(host, 'file'), 'old');
  await copyFromGuest(agent, join(guest, 'README'), join(host, 'file'));
  assert.equal(readFileSync(join(host, 'file'), 'utf8'), 'hello\n');
  assert.deepEqual(readdirSync(host).sort(), ['copy', 'file']);
});

test('cell cp rules: into an existing directory, SRC/. for contents, relative VM paths', async () => {
  const src = scratch('cp-src');
  sampleTree(src);
  const guest = scratch('cp-guest');
  mkdirSync(join(guest, 'existing'));
  let r = await copyIn(agent, src, join(guest, 'existing'));
  assert.equal(r.target, join(guest, 'existing', src.split('/').pop()!));
  r = await copyIn(agent, `${src}/.`, join(guest, 'contents'));
  assert.equal(r.target, join(guest, 'contents'));
  assert.deepEqual(describeTree(join(guest, 'contents')), describeTree(src));
  r = await copyIn(agent, join(src, 'README'), `${guest}/newdir/`);
  assert.equal(r.target, join(guest, 'newdir', 'README'));
  r = await copyIn(agent, join(src, 'README'), guest.slice(1) + '/renamed'); // relative to the VM's /
  assert.equal(readFileSync(join(guest, 'renamed'), 'utf8'), 'hello\n');
  await rejectsWith(copyIn(agent, 'relative', guest), 'invalid_argument', /host path must be absolute/);

  const host = scratch('cp-host');
  r = await copyOut(agent, join(guest, 'contents', 'bin'), host);
  assert.equal(r.target, join(host, 'bin'));
  assert.equal(readFileSync(join(host, 'bin', 'tool'), 'utf8'), '#!/bin/sh\necho tool\n');
  r = await copyOut(agent, join(guest, 'renamed'), join(host, 'named.txt'));
  assert.equal(readFileSync(r.target, 'utf8'), 'hello\n');
  await rejectsWith(copyOut(agent, '/', host), 'invalid_argument', /VM's \/ needs a destination/);
});

test('readFile streams in order, honours maxBytes, and stops the guest when the reader leaves early', async () => {
  const dir = scratch('read');
  const data = pattern(5 * 1024 * 1024);
  writeFileSync(join(dir, 'big'), data);
  const chunks: Buffer[] = [];
  for await (const c of agent.readFile(join(dir, 'big'))) chunks.push(c);
  assert.ok(Buffer.concat(chunks).equals(data));
  await rejectsWith(
    (async () => {
      for await (const _ of agent.readFile(join(dir, 'big'), { maxBytes: 1000 })) assert.fail('no data over the limit');
    })(),
    'size_limit',
    /over the limit of 1000/,
  );
  // 40 downloads left after their first chunk: each is cancelled, else the agent's 32 transfer
  // slots would be used up and the upload below refused.
  for (let i = 0; i < 40; i++) {
    for await (const _ of agent.readFile(join(dir, 'big'))) break;
  }
  assert.equal(await agent.putFile(join(dir, 'after'), { mode: 0o644 }, Buffer.from('ok')), 2);
  assert.equal((await agent.stat(join(dir, 'after'))).size, 2);
});

test('putFile: a source that fails midway cancels the upload and leaves the target alone', async () => {
  const dir = scratch('put');
  writeFileSync(join(dir, 'target'), 'before');
  async function* failing() {
    yield Buffer.alloc(200_000, 1);
    throw new Error('the source broke');
  }
  await assert.rejects(agent.putFile(join(dir, 'target'), { mode: 0o644 }, failing()), /the source broke/);
  await agent.ping();
  assert.equal(readFileSync(join(dir, 'target'), 'utf8'), 'before');
  assert.deepEqual(readdirSync(dir), ['target']);
  // An upload the guest refuses at once (the parent is a file) is an error naming the call.
  await rejectsWith(agent.putFile(join(dir, 'target', 'x'), { mode: 0o644 }, pattern(1_000_000)), 'invalid_argument', /mkstemp .*Not a directory/);
  await rejectsWith(agent.stat(join(dir, 'missing')), 'not_found', /lstat .*missing/);
  await agent.ping();
});

test('names from a hostile guest never escape the destination', async () => {
  // A fake agent: the one way to get names a real file system cannot have.
  for (const bad of ['..', 'a/b', '', 'ok\0no']) {
    const server = net.createServer((sock) => {
      const decoder = new FrameDecoder();
      sock.on('data', (chunk: Buffer) => {
        for (const f of decoder.push(chunk)) {
          if (f.type === FrameType.PING) sock.write(encodeFrame(FrameType.PONG, f.id, f.payload));
          if (f.type === FrameType.STAT) sock.write(encodeFrame(FrameType.OK, f.id, statRecord(2)));
          if (f.type === FrameType.LIST_DIR) {
            const name = Buffer.from(bad);
            const entry = Buffer.concat([Buffer.alloc(4), name, statRecord(1)]);
            entry.writeUInt32BE(name.length, 0);
            sock.write(encodeFrame(FrameType.DATA, f.id, entry));
            sock.write(encodeFrame(FrameType.OK, f.id, Buffer.from([0, 0, 0, 1])));
          }
          if (f.type === FrameType.READ_FILE) sock.write(encodeFrame(FrameType.OK, f.id, Buffer.alloc(8)));
        }
      });
    });
    const path = join(work, 'fake.sock');
    rmSync(path, { force: true });
    server.listen(path);
    await once(server, 'listening');
    const sock = net.connect(path);
    await once(sock, 'connect');
    const fake = new AgentClient(sock);
    const host = scratch('hostile');
    try {
      await rejectsWith(copyFromGuest(fake, '/etc', join(host, 'out')), 'agent_error', /refusing the guest's entry/);
      assert.deepEqual(readdirSync(host), []);
      assert.deepEqual(readdirSync(dirname(host)).filter((n) => n === 'out' || n === 'ok'), []);
    } finally {
      fake.close();
      server.close();
    }
  }
});

/** A stat record (docs/protocol.md) of the given kind, mode 0755. */
function statRecord(kind: number): Buffer {
  const b = Buffer.alloc(37);
  b[0] = kind;
  b.writeUInt32BE(0o755, 1);
  return b;
}
