/**
 * A published UDP port (src/network/port-proxy.ts) and a datagram from source port 0 (anyone
 * who can reach a port published on 0.0.0.0 can send one): it is dropped, where answering it would
 * throw inside a socket handler and end celld. Needs root (a raw socket).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { publishPort } from '../../src/network/port-proxy.js';

const root = process.getuid?.() === 0;

test('a datagram from port 0 to a published UDP port is dropped', { skip: !root && 'needs root (a raw socket)' }, async () => {
  const guest = createSocket('udp4');
  let seen = 0;
  guest.on('message', (msg, from) => {
    seen++;
    guest.send(msg, from.port, from.address);
  });
  await new Promise<void>((r) => guest.bind(0, '127.0.0.97', r));
  const proxy = await publishPort({ hostIp: '127.0.0.96', hostPort: 0, guestPort: guest.address().port, protocol: 'udp' }, '127.0.0.97');
  try {
    const script = `import socket,struct,sys
port=int(sys.argv[1]); p=b'ping'; s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_UDP)
s.sendto(struct.pack('!HHHH',0,port,8+len(p),0)+p,('127.0.0.96',0))`;
    execFileSync('python3', ['-c', script, String(proxy.port.hostPort)]);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(seen, 0);
  } finally {
    await proxy.close();
    guest.close();
  }
});
