/**
 * The agent's OOM reports (guest/oom.c, docs/protocol.md OOM), without a VM: `agent --stdio --kmsg
 * FIFO` reads kernel log lines from a FIFO the test writes, as it reads /dev/kmsg as PID 1, and
 * sends an OOM frame for each kill the kernel logged.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, openSync, rmSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FrameDecoder, FrameType, decodeOom, encodeFrame, type Frame } from '../../src/agent/frame.js';
import { ensureAgent } from '../../src/host/agent-build.js';

let workDir: string;
let agentBin: string;

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'cell-agent-oom-'));
  agentBin = (await ensureAgent({ cacheDir: join(workDir, 'cache') })).path;
});

after(() => rmSync(workDir, { recursive: true, force: true }));

/** An agent in --stdio mode reading kernel log lines from a FIFO; every frame it sends. */
async function withAgent(lines: string[], check: (oom: { pid: number; name: string }[], frames: Frame[]) => void): Promise<void> {
  const fifo = join(workDir, `kmsg-${Math.random().toString(36).slice(2)}`);
  execFileSync('mkfifo', [fifo]);
  const proc: ChildProcessWithoutNullStreams = spawn(agentBin, ['--stdio', '--kmsg', fifo], { stdio: ['pipe', 'pipe', 'pipe'] });
  const frames: Frame[] = [];
  const decoder = new FrameDecoder();
  proc.stdout.on('data', (c: Buffer) => frames.push(...decoder.push(c)));
  let stderr = '';
  proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  try {
    // Opening the FIFO for writing waits for the agent to open it for reading.
    const fd = openSync(fifo, 'w');
    // One write per line, some split in two: a FIFO, unlike /dev/kmsg, may hand over part of a line.
    for (const [i, line] of lines.entries()) {
      if (i % 3 === 2) {
        writeSync(fd, line.slice(0, 10));
        await new Promise((r) => setTimeout(r, 5));
        writeSync(fd, line.slice(10));
      } else {
        writeSync(fd, line);
      }
    }
    closeSync(fd);
    // A PING after the lines: its PONG comes after every OOM frame they made.
    proc.stdin.write(encodeFrame(FrameType.PING, 7, Buffer.from('x')));
    const deadline = Date.now() + 5000;
    while (!frames.some((f) => f.type === FrameType.PONG)) {
      if (Date.now() > deadline) assert.fail(`no PONG; agent stderr: ${stderr}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const oom = frames
      .filter((f) => f.type === FrameType.OOM)
      .map((f) => {
        assert.equal(f.id, 0);
        const d = decodeOom(f.payload)!;
        return { pid: d.pid, name: d.name.toString('latin1') };
      });
    check(oom, frames);
    assert.equal(proc.exitCode, null, `the agent is still running (stderr: ${stderr})`);
  } finally {
    proc.kill('SIGKILL');
    rmSync(fifo, { force: true });
  }
}

test('OOM kills in the kernel log become OOM frames; other lines, user messages and malformed ones do not', async () => {
  const lines = [
    '6,100,1000,-;sort invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0\n',
    '6,101,1001,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=sort,pid=86,uid=0\n',
    '3,102,1002,-;Out of memory: Killed process 86 (sort) total-vm:56672kB, anon-rss:54484kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:140kB oom_score_adj:0\n',
    // a dictionary line of a record
    ' SUBSYSTEM=virtio\n',
    '3,103,1003,-;Memory cgroup out of memory: Killed process 4242 (my prog) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4kB oom_score_adj:0\n',
    // a name with ") total-vm:" in it: the last one ends it
    '3,104,1004,-;Out of memory: Killed process 5 (a) total-vm:b) total-vm:9kB, anon-rss:1kB\n',
    // a name with the kernel's escapes of unprintable bytes
    '3,105,1005,-;Out of memory: Killed process 6 (\\x1b[31mred) total-vm:9kB, anon-rss:1kB\n',
    // written to /dev/kmsg by a guest process: the user facility (prio 8 and up) is not the kernel
    '11,106,1006,-;Out of memory: Killed process 7 (fake) total-vm:9kB\n',
    // not an OOM kill, malformed pids and prefixes
    '3,107,1007,-;Killed process 8 (nope) total-vm:9kB\n',
    '3,108,1008,-;Out of memory: Killed process -9 (neg) total-vm:9kB\n',
    '3,109,1009,-;Out of memory: Killed process 10 nope\n',
    'garbage without a prefix; Out of memory: Killed process 11 (x) total-vm:1kB\n',
    `3,110,1010,-;Out of memory: Killed process 12 (${'n'.repeat(100)}) total-vm:1kB\n`,
  ];
  await withAgent(lines, (oom) => {
    assert.deepEqual(oom, [
      { pid: 86, name: 'sort' },
      { pid: 4242, name: 'my prog' },
      { pid: 5, name: 'a) total-vm:b' },
      { pid: 6, name: '\\x1b[31mred' },
      { pid: 12, name: 'n'.repeat(64) }, // cut to 64 bytes by the agent (the host cuts again)
    ]);
  });
});

test('a line longer than the buffer is dropped, and the lines after it still count', async () => {
  await withAgent(['3,1,1,-;' + 'x'.repeat(20000) + '\n', '3,2,2,-;Out of memory: Killed process 99 (after) total-vm:1kB\n'], (oom) => {
    assert.deepEqual(oom, [{ pid: 99, name: 'after' }]);
  });
});
