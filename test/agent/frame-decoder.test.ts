/**
 * The frame decoder (src/agent/frame.ts) reads the guest's bytes, so it has to hold up against
 * anything: it never throws, it holds at most one frame's bytes, and its cost is linear in what
 * it is given however the bytes are cut into chunks.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { FrameDecoder, HEADER_SIZE, MAX_PAYLOAD, MAGIC_0, MAGIC_1, encodeFrame, type Frame } from '../../src/agent/frame.js';
import { fuzzParams } from './fuzz-runs.js';

/** Pushes `bytes` cut at `cuts` (offsets, any order, duplicates allowed). */
function decodeCut(bytes: Buffer, cuts: number[]): { frames: Frame[]; maxBuffered: number } {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const d = new FrameDecoder();
  const frames: Frame[] = [];
  let maxBuffered = 0;
  let prev = 0;
  for (const p of [...points, bytes.length]) {
    frames.push(...d.push(bytes.subarray(prev, p)));
    maxBuffered = Math.max(maxBuffered, d.bufferedBytes);
    prev = p;
  }
  return { frames, maxBuffered };
}

const frameArb = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  id: fc.integer({ min: 0, max: 0xffffffff }),
  payload: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
});

test('a frame delivered one byte at a time is reassembled in linear time', () => {
  // 512 KiB: joining the buffer on every push copied ~137 GB here (minutes); linear is ~0.1 s.
  const payload = Buffer.alloc(512 * 1024, 0x5a);
  const wire = encodeFrame(0x87, 9, payload);
  const d = new FrameDecoder();
  const started = performance.now();
  let frames: Frame[] = [];
  for (let i = 0; i < wire.length; i++) {
    frames = d.push(wire.subarray(i, i + 1));
    if ((i & 4095) === 0 && performance.now() - started > 3000) assert.fail(`reassembly is not linear: ${i} of ${wire.length} bytes took over 3 s`);
  }
  const ms = performance.now() - started;
  assert.equal(frames.length, 1);
  assert.ok(frames[0]!.payload.equals(payload));
  assert.equal(d.bufferedBytes, 0);
  console.log(`# ${wire.length} one-byte chunks reassembled in ${ms.toFixed(0)} ms`);
});

test('whole frames decode the same however the stream is cut', () => {
  fc.assert(
    fc.property(fc.array(frameArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 40 }), (frames, cuts) => {
      const wire = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.id, f.payload)));
      const { frames: out } = decodeCut(wire, cuts);
      assert.deepEqual(
        out.map((f) => [f.type, f.id, f.payload.toString('hex')]),
        frames.map((f) => [f.type, f.id, f.payload.toString('hex')]),
      );
    }),
    fuzzParams(300),
  );
});

test('garbage never makes the decoder throw or return an oversized frame; a frame after magic-free garbage is found', () => {
  const junk = fc.oneof(
    fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
    // Magic-led junk: headers with wild lengths, truncated headers.
    fc.tuple(fc.integer({ min: 0, max: 255 }), fc.nat(), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 12 })).map(([t, id, len, keep]) => {
      const h = Buffer.alloc(HEADER_SIZE);
      h[0] = MAGIC_0;
      h[1] = MAGIC_1;
      h[2] = t;
      h.writeUInt32BE(id >>> 0, 4);
      h.writeUInt32BE(len >>> 0, 8);
      return h.subarray(0, keep);
    }),
  );
  fc.assert(
    fc.property(fc.array(junk, { maxLength: 8 }), frameArb, fc.array(fc.nat(), { maxLength: 30 }), (garbage, last, cuts) => {
      const lastWire = encodeFrame(last.type, last.id, last.payload);
      const wire = Buffer.concat([...garbage, lastWire]);
      const { frames } = decodeCut(wire, cuts);
      for (const f of frames) assert.ok(f.payload.length <= MAX_PAYLOAD);
      // Garbage without a magic byte costs only itself: the frame after it arrives intact.
      const clean = Buffer.concat(garbage).filter((b) => b !== MAGIC_0);
      const after = decodeCut(Buffer.concat([Buffer.from(clean), lastWire]), cuts).frames;
      assert.equal(after.length, 1);
      assert.ok(after[0]!.payload.equals(last.payload));
      assert.equal(after[0]!.id, last.id);
    }),
    fuzzParams(300),
  );
});

test('a header that announces more than 1 MiB is skipped and the next frame is read', () => {
  const d = new FrameDecoder();
  const bogus = Buffer.from([MAGIC_0, MAGIC_1, 0x81, 0, 0, 0, 0, 1, 0x00, 0x10, 0x00, 0x01]);
  const frames = d.push(Buffer.concat([bogus, encodeFrame(0x81, 5, Buffer.from('pong'))]));
  assert.deepEqual(
    frames.map((f) => [f.type, f.id, f.payload.toString()]),
    [[0x81, 5, 'pong']],
  );
  assert.ok(d.skippedBytes >= 2);
  assert.equal(d.bufferedBytes, 0);
});

test('memory held for an incomplete frame is bounded by the frame size limit', () => {
  const d = new FrameDecoder();
  const header = Buffer.from([MAGIC_0, MAGIC_1, 0x87, 0, 0, 0, 0, 1, 0x00, 0x10, 0x00, 0x00]); // exactly 1 MiB announced
  d.push(header);
  const chunk = Buffer.alloc(64 * 1024);
  let frames: Frame[] = [];
  for (let i = 0; i < 16; i++) frames = d.push(chunk);
  assert.equal(frames.length, 1);
  assert.equal(d.bufferedBytes, 0);
  // Without a magic, bytes are dropped as they come, not kept.
  for (let i = 0; i < 100; i++) d.push(Buffer.alloc(64 * 1024, 0x41));
  assert.ok(d.bufferedBytes <= 1);
});
