import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * The egress proxy (E2B's approach): a VM with domain rules has its outbound TCP to ports 80 and
 * 443 sent here by its namespace. The name it asks for is read from what it sends first (the HTTP
 * Host header, the TLS ClientHello's SNI), decided on, resolved by celld and connected to: the
 * address the guest aimed at is never used, so a guest cannot reach a denied host by its raw
 * address or by a DNS answer of its own. Everything from the guest is bounded (16 KiB and 10 s to
 * name a host); a connection that names none, or a denied one, is closed.
 */
export type EgressDecision = { allow: true; address: string } | { allow: false; reason: string };

export interface EgressProxyOptions {
  listen: string;
  httpPort: number;
  tlsPort: number;
  decide(client: string, host: string, port: number): Promise<EgressDecision>;
  onDenied?(client: string, host: string | null, reason: string): void;
}

const MAX_HEAD = 16 * 1024;
const HEAD_TIMEOUT_MS = 10_000;
const MAX_CONNECTIONS = 1024;
const MAX_PER_CLIENT = 128;
const CONNECT_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 10 * 60_000;
const perClient = new Map<string, number>();

export class EgressProxy {
  private constructor(private readonly servers: Server[]) {}

  static async start(opts: EgressProxyOptions): Promise<EgressProxy> {
    const started = await Promise.allSettled([listen(opts, opts.httpPort, 80, httpHost), listen(opts, opts.tlsPort, 443, tlsServerName)]);
    const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // Not one server of a half-started proxy left listening (the next attempt would find its port taken).
      for (const s of servers) s.close();
      throw failed.reason;
    }
    return new EgressProxy(servers);
  }

  close(): void {
    for (const s of this.servers) s.close();
  }
}

async function listen(opts: EgressProxyOptions, port: number, targetPort: number, nameOf: (head: Buffer) => string | null | undefined): Promise<Server> {
  const server = createServer((client) => {
    handle(opts, client, targetPort, nameOf).catch(() => client.destroy());
  });
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, opts.listen, () => resolve());
  });
  server.on('error', () => {});
  return server;
}

/** Reads until `nameOf` can tell (a name, or null: none to be had), within the bounds. */
async function handle(opts: EgressProxyOptions, client: Socket, targetPort: number, nameOf: (head: Buffer) => string | null | undefined): Promise<void> {
  const who = client.remoteAddress ?? '';
  client.on('error', () => {});
  // One VM cannot take the whole network's share: connections are capped per client too.
  const open = perClient.get(who) ?? 0;
  if (open >= MAX_PER_CLIENT) return void client.destroy();
  perClient.set(who, open + 1);
  client.once('close', () => {
    const left = (perClient.get(who) ?? 1) - 1;
    if (left <= 0) perClient.delete(who);
    else perClient.set(who, left);
  });
  let head = Buffer.alloc(0);
  const name = await new Promise<string | null>((resolve) => {
    const timer = setTimeout(() => done(null), HEAD_TIMEOUT_MS);
    const done = (n: string | null) => {
      clearTimeout(timer);
      client.off('data', onData);
      client.pause();
      resolve(n);
    };
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = nameOf(head);
      if (n !== undefined) done(n);
      else if (head.length >= MAX_HEAD) done(null);
    };
    client.on('data', onData);
    client.once('close', () => done(null));
  });
  if (!name) {
    opts.onDenied?.(who, null, 'no host name (HTTP Host or TLS SNI) in what it sent');
    return void client.destroy();
  }
  const decision = await opts.decide(who, name, targetPort).catch((err: unknown) => ({ allow: false as const, reason: (err as Error).message }));
  if (!decision.allow) {
    opts.onDenied?.(who, name, decision.reason);
    return void client.destroy();
  }
  // The guest may have gone while the name was resolved: its 'close' is past, and an upstream
  // connection made now would be held open by nothing (one fd of celld's per try).
  if (client.destroyed) return;
  const upstream = connect({ host: decision.address, port: targetPort });
  const end = () => {
    client.destroy();
    upstream.destroy();
  };
  upstream.on('error', end).on('close', end);
  client.on('close', end);
  // A connection that goes quiet (or an upstream that never answers) ends, rather than holding fds.
  upstream.setTimeout(CONNECT_TIMEOUT_MS, end);
  upstream.once('connect', () => upstream.setTimeout(IDLE_TIMEOUT_MS, end));
  client.setTimeout(IDLE_TIMEOUT_MS, end);
  upstream.once('connect', () => {
    upstream.write(head);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  });
}

/**
 * The Host of an HTTP/1 request head: a name (without port), null when the head is complete or
 * malformed without one, undefined while more bytes may bring it.
 */
export function httpHost(head: Buffer): string | null | undefined {
  const text = head.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const lines = (end >= 0 ? text.slice(0, end) : text).split('\r\n');
  if (!/^[A-Z]{3,10} \S+ HTTP\/1\.[01]$/.test(lines[0] ?? '') && (end >= 0 || lines.length > 1)) return null;
  for (const line of lines.slice(1, end >= 0 ? undefined : -1)) {
    const m = /^host:\s*([^\s:]+)(?::\d+)?\s*$/i.exec(line);
    if (m) return validName(m[1]!);
  }
  return end >= 0 ? null : undefined;
}

/**
 * The server name of a TLS ClientHello (its SNI extension): the name, null when the hello is
 * complete without one or is not a hello, undefined while more bytes may bring it. Every length
 * is checked against what arrived.
 */
export function tlsServerName(buf: Buffer): string | null | undefined {
  if (buf.length < 5) return undefined;
  if (buf[0] !== 0x16 || buf[1] !== 0x03) return null; // a handshake record of TLS 1.x
  const recordEnd = 5 + buf.readUInt16BE(3);
  if (buf.length < recordEnd) return recordEnd > MAX_HEAD ? null : undefined;
  let at = 5;
  const need = (n: number) => at + n <= recordEnd;
  if (!need(4) || buf[at] !== 0x01) return null; // ClientHello
  at += 4 + 2 + 32; // handshake header, client_version, random
  if (!need(1)) return null;
  at += 1 + buf[at]!; // session_id
  if (!need(2)) return null;
  at += 2 + buf.readUInt16BE(at); // cipher_suites
  if (!need(1)) return null;
  at += 1 + buf[at]!; // compression_methods
  if (!need(2)) return null;
  const extEnd = Math.min(recordEnd, at + 2 + buf.readUInt16BE(at));
  at += 2;
  while (at + 4 <= extEnd) {
    const type = buf.readUInt16BE(at);
    const len = buf.readUInt16BE(at + 2);
    at += 4;
    if (at + len > extEnd) return null;
    if (type === 0 && len >= 5) {
      // server_name_list: u16 length, then name_type 0 (host_name), u16 length, the name
      const nameLen = buf.readUInt16BE(at + 3);
      if (buf[at + 2] !== 0 || at + 5 + nameLen > at + len) return null;
      return validName(buf.subarray(at + 5, at + 5 + nameLen).toString('latin1'));
    }
    at += len;
  }
  return null;
}

function validName(name: string): string | null {
  const n = name.toLowerCase().replace(/\.$/, '');
  return n.length > 0 && n.length <= 253 && /^[a-z0-9_.-]+$/.test(n) ? n : null;
}
