/**
 * The published-port TCP proxy on loopback (nothing leaves the machine): bytes arrive whole both
 * ways, and a client's half-close is passed on, so an answer sent after it still arrives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { publishPort } from '../../src/network/port-proxy.js';

const BYTES = 4 * 2 ** 20;

/** An upstream on 127.0.0.1: `GET` gets BYTES and EOF; anything else is counted to EOF and answered with the count. */
async function upstream(): Promise<{ server: Server; port: number; received: number[] }> {
  const received: number[] = [];
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.once('data', (first: Buffer) => {
      if (first.toString().startsWith('GET')) return void s.end(Buffer.alloc(BYTES, 1));
      let n = first.length;
      s.on('data', (c: Buffer) => (n += c.length));
      s.on('end', () => {
        received.push(n);
        s.end(`${n}\n`);
      });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port, received };
}

test('published TCP port: a download arrives whole, also to a reader that pauses', async () => {
  const up = await upstream();
  const proxy = await publishPort({ hostIp: '127.0.0.1', hostPort: 0, guestPort: up.port, protocol: 'tcp' }, '127.0.0.1');
  try {
    for (const pauseMs of [0, 300]) {
      const got = await new Promise<number>((resolve, reject) => {
        const c = connect({ host: '127.0.0.1', port: proxy.port.hostPort });
        let n = 0;
        c.write('GET /');
        c.once('data', () => {
          if (!pauseMs) return;
          c.pause();
          setTimeout(() => c.resume(), pauseMs);
        });
        c.on('data', (d: Buffer) => (n += d.length));
        c.on('close', () => resolve(n));
        c.on('error', reject);
      });
      assert.equal(got, BYTES, `reader pausing ${pauseMs} ms`);
    }
  } finally {
    await proxy.close();
    up.server.close();
  }
});

test('published TCP port: a client that sends, shuts down its writing side and waits gets the answer', async () => {
  const up = await upstream();
  const proxy = await publishPort({ hostIp: '127.0.0.1', hostPort: 0, guestPort: up.port, protocol: 'tcp' }, '127.0.0.1');
  try {
    const answer = await new Promise<string>((resolve, reject) => {
      const c = connect({ host: '127.0.0.1', port: proxy.port.hostPort, allowHalfOpen: true });
      let text = '';
      c.on('connect', () => c.end(Buffer.alloc(BYTES, 2))); // all of it, then FIN
      c.on('data', (d: Buffer) => (text += d.toString()));
      c.on('close', () => resolve(text.trim()));
      c.on('error', reject);
    });
    assert.equal(answer, String(BYTES), 'the upstream counted every byte and its answer came back after the half-close');
    assert.deepEqual(up.received, [BYTES]);
  } finally {
    await proxy.close();
    up.server.close();
  }
});

test('published TCP port: nothing listening behind it ends the client connection', async () => {
  const up = await upstream();
  const port = up.port;
  await new Promise<void>((r) => up.server.close(() => r())); // the port is free now: refused
  const proxy = await publishPort({ hostIp: '127.0.0.1', hostPort: 0, guestPort: port, protocol: 'tcp' }, '127.0.0.1');
  try {
    const ended = await new Promise<string>((resolve) => {
      const c = connect({ host: '127.0.0.1', port: proxy.port.hostPort });
      c.on('close', () => resolve('closed'));
      c.on('error', () => {});
    });
    assert.equal(ended, 'closed');
  } finally {
    await proxy.close();
  }
});
