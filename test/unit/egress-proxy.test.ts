/**
 * celld's egress proxy (src/network/egress-proxy.ts) with a guest that goes away while its name
 * is being decided: no upstream connection may be made (and held open) for it. And a proxy that
 * cannot start one of its two ports leaves the other closed. Needs root (upstream port 80).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { EgressProxy } from '../../src/network/egress-proxy.js';

const root = process.getuid?.() === 0;
const PROXY = '127.0.0.94';
const UPSTREAM = '127.0.0.95';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a guest that resets while its name is decided gets no upstream connection', { skip: !root && 'needs root (port 80)' }, async () => {
  const accepted: Socket[] = [];
  const upstream = createServer((s) => {
    accepted.push(s);
    s.on('error', () => {});
  });
  await new Promise<void>((r) => upstream.listen(80, UPSTREAM, r));
  const proxy = await EgressProxy.start({
    listen: PROXY,
    httpPort: 25080,
    tlsPort: 25443,
    decide: async () => {
      await sleep(200);
      return { allow: true, address: UPSTREAM };
    },
  });
  try {
    for (let i = 0; i < 5; i++) {
      const c = connect(25080, PROXY);
      c.on('error', () => {});
      await new Promise<void>((r) => c.once('connect', r));
      c.write('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n');
      await sleep(50);
      c.resetAndDestroy();
    }
    await sleep(500);
    assert.equal(accepted.filter((s) => !s.destroyed).length, 0, 'no upstream connection held open for a gone guest');
  } finally {
    proxy.close();
    for (const s of accepted) s.destroy();
    upstream.close();
  }
});

test('a proxy that cannot take one port leaves the other free', async () => {
  const squatter = createServer();
  await new Promise<void>((r) => squatter.listen(25444, PROXY, r));
  try {
    await assert.rejects(EgressProxy.start({ listen: PROXY, httpPort: 25081, tlsPort: 25444, decide: async () => ({ allow: false, reason: 'no' }) }), /EADDRINUSE/);
    // The HTTP port was closed again: it can be taken.
    const probe = createServer();
    await new Promise<void>((resolve, reject) => {
      probe.once('error', reject);
      probe.listen(25081, PROXY, resolve);
    });
    probe.close();
  } finally {
    squatter.close();
  }
});
