/**
 * celld's file downloads (src/agent/file-transfer.ts) against a guest that lies: sizes past the
 * limits the host asked for, listings without end, counts that do not match. The host keeps its
 * own bounds: the read or listing fails with a code, the guest is told to stop (CANCEL), and the
 * connection stays usable.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameType, PayloadWriter } from '../../src/agent/frame.js';
import { TRANSFER_TIMEOUTS } from '../../src/agent/file-transfer.js';
import { FakeGuestServer, dirEntry, pongs, rejectsWithCode } from './fake-guest.js';

const server = new FakeGuestServer();
before(() => server.start());
after(() => server.stop());

test('maxBytes of a file read is enforced by the host, not left to the guest', async () => {
  // The guest ignores max_bytes and sends 5 MiB.
  const g = await server.connect((f, g) => {
    pongs(f, g);
    if (f.type !== FrameType.READ_FILE) return;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    for (let i = 0; i < 80; i++) g.send(FrameType.DATA, f.id, chunk);
    g.send(FrameType.OK, f.id, new PayloadWriter().u64(BigInt(80 * chunk.length)).build());
  });
  try {
    let got = 0;
    const err = await rejectsWithCode(
      (async () => {
        for await (const chunk of g.client.readFile('/etc/passwd', { maxBytes: 10 })) got += chunk.length;
      })(),
      'size_limit',
      /10 bytes/,
    );
    assert.equal(err.details?.path, '/etc/passwd');
    assert.ok(got <= 10, `the reader was handed ${got} bytes of a file capped at 10`);
    // The host told the guest to stop.
    await g.next((f) => f.type === FrameType.CANCEL);
    assert.ok((await g.client.ping()) >= 0);
  } finally {
    await g.close();
  }
});

test('a file read whose OK does not match the bytes sent is an agent_error', async () => {
  const g = await server.connect((f, g) => {
    if (f.type !== FrameType.READ_FILE) return;
    g.send(FrameType.DATA, f.id, Buffer.from('abc'));
    g.send(FrameType.OK, f.id, new PayloadWriter().u64(1000n).build());
  });
  try {
    await rejectsWithCode(
      (async () => {
        for await (const _ of g.client.readFile('/x')) {
          /* drained */
        }
      })(),
      'agent_error',
      /1000/,
    );
  } finally {
    await g.close();
  }
});

test('a directory listing without end is cut off at the host bound (size_limit) and cancelled', async () => {
  let stop = false;
  const g = await server.connect((f, g) => {
    pongs(f, g);
    if (f.type === FrameType.CANCEL) stop = true;
    if (f.type !== FrameType.LIST_DIR) return;
    // Entries until the host says stop (each frame ~64 KiB, as the agent packs them).
    const frame = Buffer.concat(Array.from({ length: 1200 }, (_, i) => dirEntry(`entry-${i}`)));
    const pump = () => {
      for (let i = 0; i < 8 && !stop && !g.guest.destroyed; i++) g.send(FrameType.DATA, f.id, frame);
      if (!stop && !g.guest.destroyed) setImmediate(pump);
    };
    pump();
  });
  try {
    await rejectsWithCode(g.client.listDir('/proc/self/fd'), 'size_limit', /entries/);
    await g.next((f) => f.type === FrameType.CANCEL);
    assert.ok((await g.client.ping()) >= 0);
  } finally {
    stop = true;
    await g.close();
  }
});

test('a listing whose OK count disagrees with the entries sent is an agent_error', async () => {
  const g = await server.connect((f, g) => {
    if (f.type !== FrameType.LIST_DIR) return;
    g.send(FrameType.DATA, f.id, Buffer.concat([dirEntry('a'), dirEntry('b')]));
    g.send(FrameType.OK, f.id, new PayloadWriter().u32(5).build());
  });
  try {
    await rejectsWithCode(g.client.listDir('/'), 'agent_error', /5 entries/);
  } finally {
    await g.close();
  }
});


/** `p`, or a failure saying it was still pending after `ms` (the defect: waiting forever). */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`still waiting after ${ms} ms`)), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

test('a guest that never answers a file read does not hold the reader forever', async () => {
  const saved = { ...TRANSFER_TIMEOUTS };
  TRANSFER_TIMEOUTS.stallMs = 300;
  const g = await server.connect(pongs); // READ_FILE: no DATA, no OK, ever
  try {
    const read = (async () => {
      for await (const _ of g.client.readFile('/var/log/huge')) {
        /* nothing comes */
      }
    })();
    await rejectsWithCode(within(read, 5000), 'timeout', /sent nothing of \/var\/log\/huge/);
    await g.next((f) => f.type === FrameType.CANCEL);
    assert.ok((await g.client.ping()) >= 0);
  } finally {
    Object.assign(TRANSFER_TIMEOUTS, saved);
    await g.close();
  }
});

test('a guest that stops reading during an upload does not hold the upload forever', async () => {
  const saved = { ...TRANSFER_TIMEOUTS };
  TRANSFER_TIMEOUTS.stallMs = 300;
  const g = await server.connect();
  g.guest.pause(); // reads nothing: the host's socket buffer fills up
  try {
    await rejectsWithCode(within(g.client.putFile('/big', { mode: 0o644 }, Buffer.alloc(64 * 1024 * 1024)), 10_000), 'timeout', /read nothing/);
  } finally {
    Object.assign(TRANSFER_TIMEOUTS, saved);
    await g.close();
  }
});
