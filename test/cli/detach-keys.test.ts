import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DetachKeys, parseDetachKeys } from '../../src/cli/terminal.js';
import { CONSOLE_DETACH_KEYS } from '../../src/cli/commands/console.js';

test('detach keys: Ctrl-P Ctrl-Q detaches, split across chunks too; a lone Ctrl-P is passed on with what follows', () => {
  const keys = new DetachKeys();
  assert.deepEqual(keys.feed(Buffer.from('ab\x10')), { send: Buffer.from('ab'), detach: false });
  assert.deepEqual(keys.feed(Buffer.from('\x11rest')), { send: Buffer.from(''), detach: true });
  const other = new DetachKeys();
  assert.deepEqual(other.feed(Buffer.from('\x10x\x10\x10\x11')), { send: Buffer.from('\x10x\x10'), detach: true });
  assert.deepEqual(parseDetachKeys('ctrl-p,ctrl-q'), [0x10, 0x11]);
  assert.deepEqual(parseDetachKeys('ctrl-[,a'), [0x1b, 0x61]);
  assert.throws(() => parseDetachKeys('ctrl-pp'), /--detach-keys: "ctrl-pp" is not a key/);
});

test('detach keys: without the sequence, every byte reaches the guest in order, however it is chunked', () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 10 }), (chunks) => {
      const bytes = Buffer.concat(chunks.map((c) => Buffer.from(c)));
      fc.pre(!bytes.includes(Buffer.from([0x10, 0x11])));
      const keys = new DetachKeys();
      const sent = Buffer.concat(chunks.map((c) => keys.feed(Buffer.from(c)).send));
      // A trailing Ctrl-P is held until the next byte says what it was.
      const held = bytes.at(-1) === 0x10 ? bytes.subarray(0, -1) : bytes;
      assert.deepEqual(sent, held);
    }),
  );
});

test("console: Ctrl-] detaches; what came before it goes to the guest", () => {
  const beforeDetach = (chunk: Buffer) => new DetachKeys(CONSOLE_DETACH_KEYS).feed(chunk);
  assert.deepEqual(beforeDetach(Buffer.from('ls\n\x1djunk')), { send: Buffer.from('ls\n'), detach: true });
  assert.deepEqual(beforeDetach(Buffer.from('ls\n')), { send: Buffer.from('ls\n'), detach: false });
});
