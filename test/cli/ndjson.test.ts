import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ndjsonLines } from '../../src/sdk/ndjson.js';

async function lines(chunks: (string | Buffer)[]): Promise<string[]> {
  async function* source() {
    yield* chunks;
  }
  const out: string[] = [];
  for await (const line of ndjsonLines(source())) out.push(line);
  return out;
}

test('lines split across chunks, several per chunk, and a last one without newline', async () => {
  assert.deepEqual(await lines(['{"a":', '1}\n{"b":2}\n{"c"', ':3}']), ['{"a":1}', '{"b":2}', '{"c":3}']);
  assert.deepEqual(await lines(['x\n', '\n', 'y\n']), ['x', '', 'y']);
  assert.deepEqual(await lines([]), []);
});

test('a multi-byte character split between chunks survives', async () => {
  const bytes = Buffer.from('{"t":"héllo ✓"}\n');
  const cut = bytes.indexOf(0xe2) + 1; // inside the 3-byte check mark
  assert.deepEqual(await lines([bytes.subarray(0, cut), bytes.subarray(cut)]), ['{"t":"héllo ✓"}']);
});
