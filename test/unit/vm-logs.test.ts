/**
 * A VM's output log: capped like Docker's json-file driver (two files of at most maxBytes), read in
 * bounded chunks, and a follower's cursor survives a rotation without gaps or repeats.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { VmLogs, type LogCursor, type LogEntry } from '../../src/engine/vm-logs.js';

function withLogs(fn: (logs: VmLogs, dir: string) => Promise<void>, opts = { maxBytes: 2000, readChunk: 300 }): Promise<void> {
  const dir = mkdtempSync('/tmp/cell-logs-');
  mkdirSync(join(dir, 'vm'));
  return fn(new VmLogs(() => join(dir, 'vm'), opts), dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

async function readAll(logs: VmLogs, cursor: LogCursor): Promise<{ entries: LogEntry[]; cursor: LogCursor; reads: number }> {
  const entries: LogEntry[] = [];
  let reads = 0;
  for (;;) {
    const batch = await logs.readFrom('vm', cursor);
    reads++;
    entries.push(...batch.entries);
    cursor = batch.cursor;
    if (!batch.more) return { entries, cursor, reads };
  }
}

test('a guest that prints without end costs at most two files of maxBytes; what is kept reads back in order', () =>
  withLogs(async (logs, dir) => {
    for (let i = 0; i < 500; i++) logs.append('vm', 'stdout', Buffer.from(`line ${i}\n`));
    await logs.flushed('vm');
    assert.ok(statSync(join(dir, 'vm', 'output.log')).size <= 2000);
    assert.ok(statSync(join(dir, 'vm', 'output.log.1')).size <= 2000);
    const { entries, reads } = await readAll(logs, logs.start('vm'));
    const numbers = entries.map((e) => Number(/line (\d+)/.exec(e.text)![1]));
    assert.equal(numbers.at(-1), 499, 'the newest output is kept');
    assert.ok(numbers.length > 20 && numbers.length < 100, `kept ${numbers.length} entries`);
    assert.deepEqual(numbers, numbers.map((_, i) => numbers[0]! + i), 'in order, no gaps');
    assert.ok(reads > 5, 'read in bounded chunks, not whole');
  }));

test('a follower keeps its place across a rotation: no gap, no repeat', () =>
  withLogs(async (logs) => {
    const seen: number[] = [];
    let cursor = logs.start('vm');
    let written = 0;
    for (let round = 0; round < 30; round++) {
      for (let i = 0; i < 5; i++) logs.append('vm', 'stdout', Buffer.from(`line ${written++}\n`));
      const r = await readAll(logs, cursor);
      cursor = r.cursor;
      seen.push(...r.entries.map((e) => Number(/line (\d+)/.exec(e.text)![1])));
    }
    assert.deepEqual(seen, Array.from({ length: written }, (_, i) => i));
  }));

test('a line longer than a read chunk cannot stall a reader', () =>
  withLogs(
    async (logs) => {
      logs.append('vm', 'stdout', Buffer.from('x'.repeat(5000)));
      logs.append('vm', 'stdout', Buffer.from('after\n'));
      const { entries } = await readAll(logs, logs.start('vm'));
      assert.deepEqual(entries.map((e) => e.text), ['after\n']);
    },
    { maxBytes: 1 << 20, readChunk: 1024 },
  ));
