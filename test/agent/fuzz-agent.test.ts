/**
 * Fuzz-style: the agent client (src/agent) against a fake guest that answers every request with
 * arbitrary, garbled or misdirected frames over a real unix socket. Whatever it sends, celld's
 * side must never throw out of an event handler (each uncaught exception would end the daemon),
 * and every operation in flight must settle (a stuck request is a stuck API call) with either a
 * result or a CellError with a code, at the latest when the connection closes.
 *
 * A few hundred cases in the suite; FUZZ_RUNS=N for longer runs (scripts/fuzz.sh).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import { FrameType, PayloadWriter, encodeFrame, type Frame } from '../../src/agent/frame.js';
import { FakeGuestServer, dirEntry, statRecord, type FakeGuest } from './fake-guest.js';
import { fuzzParams } from './fuzz-runs.js';

const server = new FakeGuestServer();
before(() => server.start());
after(() => server.stop());

const GUEST_TYPES = [FrameType.OK, FrameType.PONG, FrameType.STARTED, FrameType.STDOUT, FrameType.STDERR, FrameType.EXIT, FrameType.HELLO, FrameType.DATA, FrameType.ERROR];
const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));

/** Flips, truncates or extends a well-formed payload. */
function mutated(valid: fc.Arbitrary<Buffer>): fc.Arbitrary<Buffer> {
  return fc.tuple(valid, fc.nat(), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 3 }), bytes(8)).map(([b, at, value, how, extra]) => {
    if (how === 0 || b.length === 0) return b;
    const copy = Buffer.from(b);
    if (how === 1) copy[at % copy.length] = value;
    if (how === 2) return copy.subarray(0, at % copy.length);
    if (how === 3) return Buffer.concat([copy, extra]);
    return copy;
  });
}

const payloadArb: fc.Arbitrary<Buffer> = fc.oneof(
  bytes(64),
  mutated(fc.tuple(fc.integer({ min: 0, max: 1 }), fc.integer({ min: -5, max: 300 })).map(([k, c]) => new PayloadWriter().u8(k).u32(c).build())),
  mutated(fc.nat().map((n) => new PayloadWriter().u32(n).build())),
  mutated(fc.bigInt({ min: 0n, max: 1000n }).map((n) => new PayloadWriter().u64(n).build())),
  mutated(fc.integer({ min: 0, max: 8 }).map((k) => statRecord(k, k * 10))),
  mutated(fc.array(fc.string({ maxLength: 12 }), { maxLength: 4 }).map((names) => Buffer.concat(names.map(dirEntry)))),
  mutated(fc.tuple(fc.integer({ min: 0, max: 12 }), fc.string({ maxLength: 40 })).map(([c, m]) => new PayloadWriter().u16(c).string(m).build())),
);

/** What the fake guest sends back for one host frame: frames (to whichever id) and raw junk. */
const actionArb = fc.oneof(
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('frame' as const), type: fc.oneof(fc.constantFrom(...GUEST_TYPES), fc.integer({ min: 0, max: 255 })), to: fc.constantFrom('this', 'seen', 'zero', 'random'), pick: fc.nat(), payload: payloadArb }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('junk' as const), bytes: bytes(40) }) },
);
type Action = typeof actionArb extends fc.Arbitrary<infer T> ? T : never;
const scriptArb = fc.array(fc.array(actionArb, { maxLength: 5 }), { minLength: 1, maxLength: 20 });

/** The operations of one case: each is started and must settle. */
const opsArb = fc.array(fc.constantFrom('exec', 'read', 'list', 'stat', 'ping', 'signal', 'put', 'mkdir', 'symlink', 'time', 'sync'), { minLength: 1, maxLength: 8 });

function guestAnswers(script: Action[][]): (f: Frame, g: FakeGuest) => void {
  const seen: number[] = [];
  let turn = 0;
  return (f, g) => {
    seen.push(f.id);
    const actions = script[turn++ % script.length]!;
    for (const a of actions) {
      if (g.guest.destroyed) return;
      if (a.kind === 'junk') {
        g.guest.write(a.bytes);
        continue;
      }
      const id = a.to === 'this' ? f.id : a.to === 'seen' ? seen[a.pick % seen.length]! : a.to === 'zero' ? 0 : a.pick >>> 0;
      g.guest.write(encodeFrame(a.type, id, a.payload));
    }
  };
}

async function runOp(g: FakeGuest, op: string): Promise<unknown> {
  const c = g.client;
  switch (op) {
    case 'exec': {
      const s = await c.exec({ argv: ['sh'], env: [], cwd: '/', uid: 0, gid: 0, stdin: true }, { onStdout: () => {}, onStderr: () => {} });
      const outcomes = await Promise.allSettled([s.exit, s.kill(15)]);
      for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
      return outcomes;
    }
    case 'read': {
      let n = 0;
      for await (const chunk of c.readFile('/f', { maxBytes: 100 })) n += chunk.length;
      assert.ok(n <= 100, `read ${n} bytes of a file capped at 100`);
      return n;
    }
    case 'list':
      return c.listDir('/d');
    case 'stat':
      return c.stat('/s');
    case 'ping':
      return c.ping(2000);
    case 'signal':
      return c.signalAll(15);
    case 'put':
      return c.putFile('/p', { mode: 0o644 }, Buffer.alloc(100_000, 1));
    case 'mkdir':
      return c.mkdir('/m', { mode: 0o755 });
    case 'symlink':
      return c.symlink('/l', 't');
    case 'time':
      return c.setTime();
    default:
      return c.sync(2000);
  }
}

test('arbitrary guest frames never throw out of celld, and every operation settles with a result or a CellError', async () => {
  const problems: unknown[] = [];
  const onUncaught = (err: unknown) => problems.push(err);
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);
  try {
    await fc.assert(
      fc.asyncProperty(scriptArb, opsArb, fc.integer({ min: 0, max: 20 }), async (script, ops, lingerMs) => {
        const g = await server.connect(guestAnswers(script));
        const settled = Promise.allSettled(ops.map((op) => runOp(g, op)));
        // The guest answers for a while, then the VM goes away.
        await new Promise((r) => setTimeout(r, lingerMs));
        g.guest.destroy();
        let timer: NodeJS.Timeout | undefined;
        const outcome = await Promise.race([
          settled,
          new Promise<'stuck'>((r) => (timer = setTimeout(() => r('stuck'), 3000))),
        ]).finally(() => clearTimeout(timer));
        g.client.close();
        assert.notEqual(outcome, 'stuck', `an operation did not settle after the connection closed (${ops.join(', ')})`);
        for (const o of outcome as PromiseSettledResult<unknown>[]) {
          if (o.status !== 'rejected') continue;
          assert.ok(o.reason instanceof CellError, `a failure that is not a CellError: ${String(o.reason)}`);
          assert.ok(CODES.has(o.reason.code));
        }
        assert.deepEqual(problems, []);
      }),
      fuzzParams(200),
    );
  } finally {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  }
});
