/**
 * A fake guest agent for host-side tests: an AgentClient connected over a unix socket to a peer
 * the test scripts frame by frame. The guest is hostile in these tests: whatever it sends is input
 * celld must survive.
 */
import net from 'node:net';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from '../../src/agent/client.js';
import assert from 'node:assert/strict';
import { CellError } from '../../src/domain/errors.js';
import { FrameDecoder, FrameType, encodeFrame, type Frame } from '../../src/agent/frame.js';

export interface FakeGuest {
  client: AgentClient;
  /** The guest's end of the connection. */
  guest: net.Socket;
  /** Every frame the host sent, in order. */
  received: Frame[];
  /** Resolves with the next host frame that matches (already received or still to come). */
  next(pred: (f: Frame) => boolean, timeoutMs?: number): Promise<Frame>;
  send(type: number, id: number, payload?: Buffer): void;
  close(): Promise<void>;
}

/** One listening socket per test file; each `connect` is a fresh pair. */
export class FakeGuestServer {
  private readonly dir = mkdtempSync(join(tmpdir(), 'cell-fake-guest-'));
  private readonly path = join(this.dir, 'agent.sock');
  private readonly server = net.createServer();
  private readonly accepted: net.Socket[] = [];
  private waiting: ((s: net.Socket) => void)[] = [];

  async start(): Promise<void> {
    this.server.on('connection', (s) => {
      const w = this.waiting.shift();
      if (w) w(s);
      else this.accepted.push(s);
    });
    this.server.listen(this.path);
    await once(this.server, 'listening');
  }

  async connect(onFrame?: (f: Frame, g: FakeGuest) => void): Promise<FakeGuest> {
    const peer = new Promise<net.Socket>((resolve) => {
      const s = this.accepted.shift();
      if (s) resolve(s);
      else this.waiting.push(resolve);
    });
    const host = net.connect(this.path);
    await once(host, 'connect');
    const guest = await peer;
    guest.on('error', () => {});
    const received: Frame[] = [];
    let waiters: { pred: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
    const decoder = new FrameDecoder();
    const fake: FakeGuest = {
      client: new AgentClient(host),
      guest,
      received,
      next(pred, timeoutMs = 5000) {
        const seen = received.find(pred);
        if (seen) return Promise.resolve(seen);
        return new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('the host did not send the frame the fake guest waits for')), timeoutMs);
          waiters.push({
            pred,
            resolve: (f) => {
              clearTimeout(timer);
              resolve(f);
            },
          });
        });
      },
      send(type, id, payload) {
        if (!guest.destroyed) guest.write(encodeFrame(type, id, payload));
      },
      async close() {
        fake.client.close();
        guest.destroy();
        if (!guest.closed) await once(guest, 'close');
      },
    };
    guest.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        received.push(f);
        waiters = waiters.filter((w) => {
          if (!w.pred(f)) return true;
          w.resolve(f);
          return false;
        });
        onFrame?.(f, fake);
      }
    });
    return fake;
  }

  async stop(): Promise<void> {
    this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A stat record (docs/protocol.md) of the given kind, mode 0644, with `size`. */
export function statRecord(kind: number, size = 0): Buffer {
  const b = Buffer.alloc(37);
  b[0] = kind;
  b.writeUInt32BE(0o644, 1);
  b.writeBigUInt64BE(BigInt(size), 13);
  return b;
}

/** One LIST_DIR entry: string name, stat record. */
export function dirEntry(name: string): Buffer {
  const n = Buffer.from(name);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(n.length);
  return Buffer.concat([len, n, statRecord(1)]);
}

/** Answers PING with PONG, as a live agent does; a test scripts the rest. */
export function pongs(f: Frame, g: FakeGuest): void {
  if (f.type === FrameType.PING) g.send(FrameType.PONG, f.id, f.payload);
}

/** Awaits `p` and checks it failed with a CellError of `code` (and a message matching). */
export async function rejectsWithCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<CellError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof CellError, `expected a CellError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected a ${code} error`);
}
