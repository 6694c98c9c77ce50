import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { allowsAddress, allowsDomain, parseEgress } from '../../src/domain/egress.js';
import { httpHost, tlsServerName } from '../../src/network/egress-proxy.js';

test('egress rules: domains with and without *., CIDRs; deny wins; any allow rule denies the rest', () => {
  const p = parseEgress(['allow=pypi.org,*.pythonhosted.org,10.20.0.0/16', 'deny=evil.pythonhosted.org,10.20.5.7'])!;
  assert.deepEqual(p.allow, { domains: ['pypi.org', '*.pythonhosted.org'], cidrs: ['10.20.0.0/16'] });
  assert.deepEqual(p.deny.cidrs, ['10.20.5.7/32']);
  assert.equal(allowsDomain(p, 'pypi.org'), true);
  assert.equal(allowsDomain(p, 'PyPI.org.'), true, 'case and a final dot do not matter');
  assert.equal(allowsDomain(p, 'files.pythonhosted.org'), true);
  assert.equal(allowsDomain(p, 'pythonhosted.org'), true, '*.x covers x itself');
  assert.equal(allowsDomain(p, 'evil.pythonhosted.org'), false, 'deny wins');
  assert.equal(allowsDomain(p, 'notpypi.org'), false, 'not a suffix match on a label boundary');
  assert.equal(allowsDomain(p, 'example.com'), false, 'with allow rules the rest is denied');
  assert.equal(allowsAddress(p, '10.20.1.1'), true);
  assert.equal(allowsAddress(p, '10.20.5.7'), false);
  assert.equal(allowsAddress(p, '8.8.8.8'), false);
  const denyOnly = parseEgress(['deny=example.com'])!;
  assert.equal(allowsDomain(denyOnly, 'anything.else'), true, 'default allow');
  assert.equal(allowsDomain(denyOnly, 'example.com'), false);
  for (const bad of ['allow=', 'permit=x.com', 'allow=-x.com', 'allow=1.2.3.4/33', 'allow=a..b', 'allow=http://x.com']) {
    assert.throws(() => parseEgress([bad]), /--egress/, bad);
  }
});

test('the HTTP Host of a request head, bounded; none from garbage', () => {
  assert.equal(httpHost(Buffer.from('GET / HTTP/1.1\r\nHost: Site-A.test:8080\r\n\r\n')), 'site-a.test');
  assert.equal(httpHost(Buffer.from('GET / HTTP/1.1\r\nUser-Agent: x\r\n')), undefined, 'more may come');
  assert.equal(httpHost(Buffer.from('GET / HTTP/1.1\r\n\r\n')), null, 'complete without a Host');
  assert.equal(httpHost(Buffer.from('\x16\x03\x01 garbage\r\n')), null);
  assert.equal(httpHost(Buffer.from('GET / HTTP/1.1\r\nHost: a b\r\n\r\n')), null);
});

// A real ClientHello, from Node's TLS client.
const server = createServer();
after(() => server.close());

async function clientHello(servername: string | undefined): Promise<Buffer> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  const got = new Promise<Buffer>((resolve) => server.once('connection', (s) => s.once('data', (d: Buffer) => (s.destroy(), resolve(d)))));
  const raw = connect(port, '127.0.0.1');
  const tls = tlsConnect({ socket: raw, servername, rejectUnauthorized: false });
  tls.on('error', () => {});
  const hello = await got;
  tls.destroy();
  server.close();
  return hello;
}

test('the SNI of a real TLS ClientHello, and nothing from a cut or bent one', async () => {
  const hello = await clientHello('www.site-a.test');
  assert.equal(tlsServerName(hello), 'www.site-a.test');
  assert.equal(tlsServerName(hello.subarray(0, 40)), undefined, 'a partial record waits for more');
  const bent = Buffer.from(hello);
  bent.writeUInt16BE(0xffff, 3);
  assert.equal(tlsServerName(bent), null, 'a record longer than the bound is refused');
  assert.equal(tlsServerName(Buffer.from('GET / HTTP/1.1\r\n')), null);
  for (let cut = 0; cut < hello.length; cut += 7) {
    const mangled = Buffer.from(hello);
    mangled[cut] = mangled[cut]! ^ 0xff;
    const name = tlsServerName(mangled); // never throws, whatever byte is bent
    assert.ok(name === null || name === undefined || typeof name === 'string');
  }
  assert.equal(tlsServerName(await clientHello(undefined)), null, 'no SNI: no name');
});
