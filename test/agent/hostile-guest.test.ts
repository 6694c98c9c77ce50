/**
 * celld's side of the agent protocol against a guest that lies: malformed frames, sizes past the
 * limits the host asked for, listings without end. Each case is a defect a hostile guest could
 * use to end celld (an uncaught exception kills every VM's daemon) or to make it hold unbounded
 * memory. The host must fail the one operation (a CellError with a code), never throw out of its
 * socket handler, and stay usable for the next request.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameType, PayloadWriter } from '../../src/agent/frame.js';
import { FakeGuestServer, pongs, rejectsWithCode, statRecord } from './fake-guest.js';

const server = new FakeGuestServer();
before(() => server.start());
after(() => server.stop());

/** Collects the uncaught exceptions of the test (each one would have ended celld). */
function watchUncaught(): { errors: unknown[]; stop: () => void } {
  const errors: unknown[] = [];
  const onErr = (err: unknown) => errors.push(err);
  process.on('uncaughtException', onErr);
  return { errors, stop: () => process.off('uncaughtException', onErr) };
}

for (const [label, payload] of [
  ['an empty', Buffer.alloc(0)],
  ['a 4-byte', Buffer.from([0, 0, 0, 0])],
  ['an unknown kind of', Buffer.from([7, 0, 0, 0, 0])],
  ['a negative exit code in', Buffer.from([0, 0xff, 0xff, 0xff, 0xfb])],
] as const) {
  test(`${label} EXIT frame fails that exec with agent_error; celld and the connection carry on`, async () => {
    const uncaught = watchUncaught();
    // The first exec gets the malformed EXIT, the next ones well-formed EXITs (status 9, signal 9).
    const exits = [payload, Buffer.from([0, 0, 0, 0, 9]), Buffer.from([1, 0, 0, 0, 9])];
    const g = await server.connect((f, g) => {
      pongs(f, g);
      if (f.type === FrameType.EXEC) {
        g.send(FrameType.STARTED, f.id, new PayloadWriter().u32(42).build());
        g.send(FrameType.EXIT, f.id, exits.shift()!);
      }
    });
    const exec = (argv0: string) => g.client.exec({ argv: [argv0], env: [], cwd: '/', uid: 0, gid: 0, stdin: false });
    try {
      const session = await exec('true');
      await rejectsWithCode(session.exit, 'agent_error', /EXIT/);
      // The connection is still good, and well-formed EXITs report as before.
      assert.ok((await g.client.ping()) >= 0);
      const exited = await exec('a');
      assert.deepEqual(await exited.exit, { exitCode: 9, signal: null });
      assert.equal(exited.pid, 42);
      assert.deepEqual(await (await exec('b')).exit, { exitCode: null, signal: 9 });
      assert.deepEqual(uncaught.errors, []);
    } finally {
      uncaught.stop();
      await g.close();
    }
  });
}

test('a STAT reply that does not parse is an agent_error, not an internal RangeError', async () => {
  const g = await server.connect((f, g) => {
    if (f.type === FrameType.STAT) g.send(FrameType.OK, f.id, statRecord(1).subarray(0, 20));
  });
  try {
    await rejectsWithCode(g.client.stat('/etc'), 'agent_error', /STAT/);
  } finally {
    await g.close();
  }
});

test("a guest's ERROR message is bounded and stripped of control characters", async () => {
  const g = await server.connect((f, g) => {
    if (f.type !== FrameType.STAT) return;
    const message = `\x1b]0;pwned\x07${'x'.repeat(500_000)}`;
    g.send(FrameType.ERROR, f.id, new PayloadWriter().u16(7).string(message).build());
  });
  try {
    const err = await rejectsWithCode(g.client.stat('/etc'), 'agent_error');
    assert.ok(err.message.length <= 2048, `message of ${err.message.length} characters`);
    assert.doesNotMatch(err.message, /[\x00-\x08\x0a-\x1f\x7f]/);
  } finally {
    await g.close();
  }
});

test('an output handler that throws fails its exec (the process is killed), not celld or the connection', async () => {
  const uncaught = watchUncaught();
  const g = await server.connect((f, g) => {
    pongs(f, g);
    if (f.type === FrameType.EXEC) {
      g.send(FrameType.STARTED, f.id, new PayloadWriter().u32(42).build());
      g.send(FrameType.STDOUT, f.id, Buffer.from('\xff'.repeat(10), 'latin1'));
    }
  });
  try {
    const session = await g.client.exec(
      { argv: ['cat'], env: [], cwd: '/', uid: 0, gid: 0, stdin: false },
      {
        onStdout: () => {
          throw new Error('the sink is gone');
        },
      },
    );
    await rejectsWithCode(session.exit, 'agent_error', /the sink is gone/);
    const kill = await g.next((f) => f.type === FrameType.KILL && f.id === session.id);
    assert.equal(kill.payload.readUInt32BE(0), 9);
    assert.ok((await g.client.ping()) >= 0);
    assert.deepEqual(uncaught.errors, []);
  } finally {
    uncaught.stop();
    await g.close();
  }
});
