/**
 * celld's DNS relay (src/network/dns-relay.ts) against a hostile guest, on loopback addresses:
 * a datagram from source port 0 must not end celld, what the relay cannot parse (or a class other
 * than IN) never reaches the upstream resolver past the egress policy, a `local` hook that throws
 * costs one query, and a flood is cut per client per second. Needs root (the relay binds port 53).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { DnsRelay } from '../../src/network/dns-relay.js';
import { encodeQuery, parseAnswer, RCODE, TYPE } from '../../src/network/dns-wire.js';

const root = process.getuid?.() === 0;
const RELAY = '127.0.0.91';
const UPSTREAM = '127.0.0.92';

async function upstream(): Promise<{ socket: Socket; seen: Buffer[] }> {
  const socket = createSocket('udp4');
  const seen: Buffer[] = [];
  socket.on('message', (msg, from) => {
    seen.push(msg);
    // Answers like a resolver: the query back with QR set.
    const answer = Buffer.from(msg);
    answer[2] = answer[2]! | 0x80;
    socket.send(answer, from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(53, UPSTREAM, resolve));
  return { socket, seen };
}

async function client(): Promise<{ socket: Socket; answers: Buffer[]; port: number }> {
  const socket = createSocket('udp4');
  const answers: Buffer[] = [];
  socket.on('message', (msg) => answers.push(msg));
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return { socket, answers, port: socket.address().port };
}

const settle = () => new Promise((r) => setTimeout(r, 150));

test('a query from source port 0 is dropped, not answered with a throw', { skip: !root && 'needs root (port 53, a raw socket)' }, async () => {
  const up = await upstream();
  const relay = await DnsRelay.start({ listen: RELAY, upstreams: [UPSTREAM], local: () => null });
  try {
    const query = encodeQuery(7, 'example.com', TYPE.A);
    // A UDP header with source port 0, through a raw socket (a guest's root can do the same).
    const script = `import socket,struct,sys
p=bytes.fromhex(sys.argv[1]); s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_UDP)
s.sendto(struct.pack('!HHHH',0,53,8+len(p),0)+p,('${RELAY}',0))`;
    execFileSync('python3', ['-c', script, query.toString('hex')]);
    await settle();
    assert.equal(up.seen.length, 0);
    assert.ok(relay.dropped >= 1);
  } finally {
    relay.close();
    up.socket.close();
  }
});

test('what the relay cannot read, or another class, is not forwarded past the policy', { skip: !root && 'needs root (port 53)' }, async () => {
  const up = await upstream();
  const c = await client();
  const relay = await DnsRelay.start({ listen: RELAY, upstreams: [UPSTREAM], local: (name) => (name.endsWith('evil.test') ? 'nxdomain' : null) });
  try {
    // A compression pointer in the question: upstream resolvers may read it as evil.test.
    const pointer = Buffer.concat([encodeQuery(1, 'x', TYPE.A).subarray(0, 12), Buffer.from([4]), Buffer.from('evil'), Buffer.from([0xc0, 12]), Buffer.from([0, 1, 0, 1])]);
    c.socket.send(pointer, 53, RELAY);
    // Two questions.
    const two = encodeQuery(2, 'evil.test', TYPE.A);
    two.writeUInt16BE(2, 4);
    c.socket.send(two, 53, RELAY);
    // Class CH (3) for a denied name: NXDOMAIN from the relay; for another name: REFUSED.
    const ch = encodeQuery(3, 'evil.test', TYPE.A);
    ch.writeUInt16BE(3, ch.length - 2);
    c.socket.send(ch, 53, RELAY);
    const ch2 = encodeQuery(4, 'fine.test', TYPE.A);
    ch2.writeUInt16BE(3, ch2.length - 2);
    c.socket.send(ch2, 53, RELAY);
    await settle();
    assert.equal(up.seen.length, 0, 'nothing reached the upstream');
    const rcodes = new Map(c.answers.map((a) => [a.readUInt16BE(0), parseAnswer(a).rcode]));
    assert.equal(rcodes.get(1), RCODE.FORMERR);
    assert.equal(rcodes.get(2), RCODE.FORMERR);
    assert.equal(rcodes.get(3), RCODE.NXDOMAIN);
    assert.equal(rcodes.get(4), RCODE.REFUSED);
    // A plain query still goes on.
    c.socket.send(encodeQuery(5, 'fine.test', TYPE.A), 53, RELAY);
    await settle();
    assert.equal(up.seen.length, 1);
  } finally {
    relay.close();
    up.socket.close();
    c.socket.close();
  }
});

test('a local hook that throws costs one query, not celld', { skip: !root && 'needs root (port 53)' }, async () => {
  const c = await client();
  const relay = await DnsRelay.start({
    listen: RELAY,
    upstreams: [UPSTREAM],
    local: () => {
      throw new Error('store is busy');
    },
  });
  try {
    c.socket.send(encodeQuery(9, 'a.test', TYPE.A), 53, RELAY);
    await settle();
    assert.equal(relay.dropped, 1);
  } finally {
    relay.close();
    c.socket.close();
  }
});

test('a flood is cut per client per second, local answers included', { skip: !root && 'needs root (port 53)' }, async () => {
  const c = await client();
  let asked = 0;
  const relay = await DnsRelay.start({
    listen: RELAY,
    upstreams: [UPSTREAM],
    maxRatePerClient: 50,
    local: () => {
      asked++;
      return ['10.0.0.1'];
    },
  });
  try {
    for (let i = 0; i < 200; i++) c.socket.send(encodeQuery(i, 'vm.test', TYPE.A), 53, RELAY);
    await settle();
    assert.ok(asked <= 50 * 2, `${asked} lookups`);
    assert.ok(relay.dropped >= 100);
  } finally {
    relay.close();
    c.socket.close();
  }
});
