/**
 * A guest's OOM kills on the fake backend (the real agent, no QEMU): the agent reads a FIFO as its
 * kernel log (`--kmsg`), and what the "kernel" logs there becomes the VM's `oom` events (validated,
 * a few a second at most) and an exec's `oomKilled`. The real-QEMU path is in test/e2e/errors.test.ts.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { parseEventFilters, type CellEvent } from '../../src/domain/events.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

let fake: FakeEngine;
let dir: string;
let fifo: string;
let writer = -1;
before(async () => {
  fake = await openFakeEngine();
  dir = mkdtempSync('/tmp/cell-oom-');
  fifo = join(dir, 'kmsg');
  execFileSync('mkfifo', [fifo]);
  fake.backend.agentArgs = ['--kmsg', fifo];
});
after(async () => {
  if (writer >= 0) closeSync(writer);
  await fake?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

const kill = (pid: number, name: string) => `3,1,1,-;Out of memory: Killed process ${pid} (${name}) total-vm:1kB, anon-rss:1kB\n`;

async function oomEvents(vm: string, count: number): Promise<CellEvent[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const events: CellEvent[] = [];
    for await (const e of fake.engine.events.read({ since: new Date(0), until: new Date(), filter: parseEventFilters([`vm=${vm}`, 'event=oom']) })) events.push(e);
    if (events.length >= count || Date.now() > deadline) return events;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("the agent's OOM reports are the VM's oom events: names made safe, five at once then two a second", async () => {
  const { engine } = fake;
  const vm = await engine.vms.create({ image: 'busybox', name: 'hungry' });
  await engine.vms.start(vm.id);
  writer = openSync(fifo, 'w'); // the agent has it open already: this does not wait
  writeSync(writer, kill(101, 'sort') + kill(102, '\\x1b[2Jwipe') + kill(103, 'n'.repeat(200)) + kill(104, 'd') + kill(105, 'e'));
  writeSync(writer, kill(106, 'f') + kill(107, 'g') + kill(108, 'h')); // over the burst
  const burst = await oomEvents('hungry', 5);
  assert.deepEqual(
    burst.map((e) => [e.attributes.pid, e.attributes.process]),
    [['101', 'sort'], ['102', '\\x1b[2Jwipe'], ['103', 'n'.repeat(64)], ['104', 'd'], ['105', 'e']],
  );
  assert.equal(burst[0]!.actor.name, 'hungry');
  await new Promise((r) => setTimeout(r, 600));
  writeSync(writer, kill(109, 'late'));
  const all = await oomEvents('hungry', 6);
  assert.equal(all.length, 6);
  assert.deepEqual(all[5]!.attributes, { pid: '109', process: 'late', suppressed: '3' });
});

test("an exec whose process the OOM killer ended says so: 137 and oomKilled; other ends do not", async () => {
  const { engine } = fake;
  const sink = { stdout: () => {}, stderr: () => {} };
  // The process logs its own OOM kill (the FIFO is the agent's kernel log) and dies of SIGKILL.
  const line = kill(0, 'sh').replace(' 0 ', ' %d ').replace(/\n$/, '\\n');
  const oom = await engine.vms.exec('hungry', { cmd: ['sh', '-c', `printf '${line}' $$ > ${fifo}; kill -9 $$`] }, sink);
  assert.equal(oom.exitCode, 137);
  assert.equal(oom.oomKilled, true);
  const plain = await engine.vms.exec('hungry', { cmd: ['sh', '-c', 'kill -9 $$'] }, sink);
  assert.equal(plain.exitCode, 137);
  assert.equal(plain.oomKilled, undefined, 'a SIGKILL is not an OOM kill');
  // Another process's kill does not mark this exec.
  const other = await engine.vms.exec('hungry', { cmd: ['sh', '-c', `printf '${kill(4000000, 'x').replace(/\n$/, '\\n')}' > ${fifo}; exit 3`] }, sink);
  assert.deepEqual([other.exitCode, other.oomKilled], [3, undefined]);
  await engine.vms.remove('hungry', true);
});
