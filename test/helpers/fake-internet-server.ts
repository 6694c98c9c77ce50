/**
 * The fake internet's servers, one process inside the internet namespace (started by
 * fake-internet.ts as `ip netns exec <ns> node --import tsx fake-internet-server.ts <config>`):
 * HTTP on 80 and HTTPS on 443 of every site's address, DNS on UDP and TCP 53, a UDP echo on 7.
 * Every connection, request and query is appended to a JSON-lines log the test reads.
 *
 * stdin is the control channel: one JSON command per line ({"id":1,"op":"setName",...}), acked on
 * stdout ({"ack":1}). When stdin closes (the test process is gone, however it ended) we exit, so
 * a crashed test cannot leave this server behind.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Socket, type Server as TcpServer } from 'node:net';
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createInterface } from 'node:readline';
import { encodeAnswer, encodeError, parseQuery, RCODE, TYPE } from '../../src/network/dns-wire.js';

export interface ServerConfig {
  log: string;
  sites: { id: string; address: string; names: string[]; cert: string; key: string }[];
  dns: { address: string; ttl: number; names: Record<string, string[]> };
  echo: { address: string; port: number };
}

const config = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as ServerConfig;
const names = new Map(Object.entries(config.dns.names).map(([k, v]) => [normalize(k), v]));
const siteByAddress = new Map(config.sites.map((s) => [s.address, s]));

function normalize(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

// Synchronous appends: entries are in order and on disk before the reply leaves, so a test that
// got its answer can read the log at once.
function log(entry: Record<string, unknown>): void {
  appendFileSync(config.log, JSON.stringify({ t: Date.now(), ...entry }) + '\n');
}

function client(sock: { remoteAddress?: string | undefined; remotePort?: number | undefined }) {
  return { address: sock.remoteAddress ?? '', port: sock.remotePort ?? 0 };
}

// --- HTTP and HTTPS ---

/** The largest /bytes?n= we serve: bounded so a typo cannot stream forever. */
const MAX_STREAM = 64 * 1024 ** 3;
const CHUNK = Buffer.alloc(256 * 1024, 'x');

function handler(site: ServerConfig['sites'][number], scheme: 'http' | 'https') {
  return (req: IncomingMessage, res: ServerResponse) => {
    const sock = req.socket as Socket & Partial<TLSSocket>;
    const url = new URL(req.url ?? '/', 'http://x');
    const sni = scheme === 'https' && typeof sock.servername === 'string' ? sock.servername : null;
    const seen = {
      site: site.id,
      scheme,
      local: sock.localAddress ?? '',
      method: req.method ?? '',
      path: req.url ?? '',
      host: req.headers.host ?? null,
      sni,
      client: client(sock),
    };
    const json = (status: number, body: unknown) => {
      const text = JSON.stringify(body) + '\n';
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    if (url.pathname === '/bytes' && (req.method === 'GET' || req.method === 'HEAD')) {
      const n = Number(url.searchParams.get('n') ?? '0');
      if (!Number.isSafeInteger(n) || n < 0 || n > MAX_STREAM) return json(400, { ...seen, error: `n must be 0..${MAX_STREAM}` });
      log({ kind: 'http', ...seen, bytes: n });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
      if (req.method === 'HEAD') return res.end();
      let left = n;
      // Honour back-pressure: write until the socket's buffer is full, go on at 'drain'.
      const pump = () => {
        while (left > 0) {
          const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
          left -= chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      return pump();
    }
    if (url.pathname === '/sink' && (req.method === 'POST' || req.method === 'PUT')) {
      let bytes = 0;
      req.on('data', (c: Buffer) => (bytes += c.length));
      req.on('end', () => {
        log({ kind: 'http', ...seen, bytes });
        json(200, { ...seen, bytes });
      });
      return;
    }
    req.resume();
    log({ kind: 'http', ...seen });
    json(200, seen);
  };
}

const contexts = new Map<string, SecureContext>();
for (const site of config.sites) {
  const ctx = createSecureContext({ cert: readFileSync(site.cert), key: readFileSync(site.key) });
  for (const n of site.names) contexts.set(normalize(n), ctx);
}

const servers: (HttpServer | TcpServer)[] = [];
for (const site of config.sites) {
  const http = createHttpServer(handler(site, 'http'));
  http.on('connection', (s: Socket) => log({ kind: 'connect', site: site.id, scheme: 'http', local: s.localAddress, client: client(s) }));
  http.on('clientError', (_err, s: Socket) => s.destroy());
  // TLS by hand over a plain TCP server rather than https.Server: a failed handshake's socket is
  // closed by the time https reports it, and its client address with it; here the raw socket's
  // address is kept from the start. Any SNI a site's certificate carries is served with that
  // certificate on every address (as a CDN would: site A's address answers for site-b.test);
  // an unknown or absent SNI gets the address's own certificate.
  const own = createSecureContext({ cert: readFileSync(site.cert), key: readFileSync(site.key) });
  const overTls = createHttpServer(handler(site, 'https'));
  overTls.on('clientError', (_err, s: Socket) => s.destroy());
  const tls = createTcpServer((raw) => {
    const from = client(raw);
    log({ kind: 'connect', site: site.id, scheme: 'https', local: raw.localAddress, client: from });
    const sock = new TLSSocket(raw, { isServer: true, secureContext: own, SNICallback: (name, cb) => cb(null, contexts.get(normalize(name)) ?? own) });
    const sni = () => (typeof sock.servername === 'string' ? sock.servername : null);
    let secure = false;
    // A client that never finishes its handshake is dropped after 10 s.
    raw.setTimeout(10_000, () => secure || sock.destroy());
    sock.on('secure', () => {
      secure = true;
      raw.setTimeout(0);
      // A handshake the server finished: with TLS 1.3 a client that then refuses our certificate
      // (a wrong name, for curl) closes after this, so it shows here and never as a request.
      log({ kind: 'tls', site: site.id, sni: sni(), client: from });
      overTls.emit('connection', sock);
    });
    sock.on('error', (err: Error) => {
      if (!secure) log({ kind: 'tls-error', site: site.id, sni: sni(), client: from, error: err.message.trim() });
      sock.destroy();
    });
  });
  servers.push(http, tls);
}

// --- DNS ---

/** Classic UDP DNS without EDNS: 512 bytes. */
const UDP_LIMIT = 512;

/** The reply to one DNS message, or null when it deserves none; every outcome is logged. */
function answerDns(msg: Buffer, proto: 'udp' | 'tcp', from: { address: string; port: number }): Buffer | null {
  const parsed = parseQuery(msg);
  if (!parsed.ok) {
    log({ kind: 'dns-malformed', proto, client: from, bytes: msg.length, reason: parsed.reason });
    return parsed.drop ? null : encodeError(parsed.id, parsed.rd, parsed.rcode);
  }
  const { question } = parsed.query;
  const known = names.get(question.name);
  let rcode: number = RCODE.NOERROR;
  let answers: string[] = [];
  if (question.class !== 1) rcode = RCODE.REFUSED;
  else if (!known) rcode = RCODE.NXDOMAIN;
  else if (question.type === TYPE.A || question.type === TYPE.ANY) answers = known;
  // A known name asked for another type (AAAA, MX...): NOERROR with no records, as real servers do.
  log({ kind: 'dns', proto, name: question.name, type: question.type, client: from, rcode, answers });
  return encodeAnswer(parsed.query, rcode, answers, config.dns.ttl, proto === 'udp' ? UDP_LIMIT : 65535);
}

const udp53 = createSocket('udp4');
udp53.on('message', (msg, rinfo) => {
  const reply = answerDns(msg, 'udp', { address: rinfo.address, port: rinfo.port });
  if (reply) udp53.send(reply, rinfo.port, rinfo.address);
});

const tcp53 = createTcpServer((sock) => {
  const from = client(sock);
  let pending = Buffer.alloc(0);
  // An idle or half-sent connection is closed after 10 s; nothing is held for a slow client.
  sock.setTimeout(10_000, () => sock.destroy());
  sock.on('error', () => sock.destroy());
  sock.on('data', (chunk: Buffer) => {
    // A message is at most 2 + 65535 bytes, so the buffer never holds more than one plus a chunk.
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 2) {
      const len = pending.readUInt16BE(0);
      if (pending.length < 2 + len) break;
      const reply = answerDns(pending.subarray(2, 2 + len), 'tcp', from);
      pending = pending.subarray(2 + len);
      if (reply) {
        const framed = Buffer.alloc(2 + reply.length);
        framed.writeUInt16BE(reply.length, 0);
        reply.copy(framed, 2);
        sock.write(framed);
      }
    }
  });
});
servers.push(tcp53);

// --- UDP echo ---

const echo = createSocket('udp4');
echo.on('message', (msg, rinfo) => {
  log({ kind: 'udp-echo', client: { address: rinfo.address, port: rinfo.port }, bytes: msg.length });
  echo.send(msg, rinfo.port, rinfo.address);
});

// --- start, control, stop ---

async function listen(): Promise<void> {
  const tcp = (srv: HttpServer | TcpServer, port: number, address: string) =>
    new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ port, host: address }, () => resolve());
    });
  const dgram = (sock: UdpSocket, port: number, address: string) =>
    new Promise<void>((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(port, address, () => resolve());
    });
  let i = 0;
  const waits: Promise<void>[] = [];
  for (const site of config.sites) {
    waits.push(tcp(servers[i++]!, 80, site.address), tcp(servers[i++]!, 443, site.address));
  }
  waits.push(tcp(tcp53, 53, config.dns.address), dgram(udp53, 53, config.dns.address), dgram(echo, config.echo.port, config.echo.address));
  await Promise.all(waits);
}

interface Command {
  id: number;
  op: 'setName';
  name: string;
  addresses: string[] | null;
}

listen().then(
  () => {
    process.stdout.write(JSON.stringify({ ready: true, sites: [...siteByAddress.keys()] }) + '\n');
    const lines = createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      let cmd: Command;
      try {
        cmd = JSON.parse(line) as Command;
      } catch {
        return;
      }
      if (cmd.op === 'setName') {
        if (cmd.addresses) names.set(normalize(cmd.name), cmd.addresses);
        else names.delete(normalize(cmd.name));
      }
      process.stdout.write(JSON.stringify({ ack: cmd.id }) + '\n');
    });
    lines.on('close', () => process.exit(0));
  },
  (err: Error) => {
    process.stderr.write(`fake internet: cannot listen: ${err.message}\n`);
    process.exit(1);
  },
);
