import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { PortSpec, PublishedPort } from '../domain/network.js';

/**
 * A published port: celld listens on the host address and port and relays each connection (or,
 * for UDP, each client's datagrams) to the VM's address on its network. A proxy in celld rather
 * than a DNAT rule: it binds 127.0.0.1 too (DNAT to another namespace does not take loopback
 * traffic), it holds the host port (no other program can take it meanwhile), and closing it is
 * all there is to undo. Connections and UDP clients are capped; idle UDP clients expire.
 */
export interface PortProxy {
  readonly port: PublishedPort;
  /** When a connection or datagram last passed (ms; `--idle-timeout`), undefined before the first. */
  readonly lastTrafficAt: number | undefined;
  close(): Promise<void>;
}

const MAX_CONNECTIONS = 1024;
const MAX_UDP_CLIENTS = 256;
const UDP_IDLE_MS = 60_000;

export async function publishPort(spec: PortSpec, target: string): Promise<PortProxy> {
  return spec.protocol === 'tcp' ? publishTcp(spec, target) : publishUdp(spec, target);
}

function bindError(spec: PortSpec, err: NodeJS.ErrnoException): CellError {
  const where = `${spec.hostIp}:${spec.hostPort}/${spec.protocol}`;
  if (err.code === 'EADDRINUSE') return new CellError(ErrorCodes.CONFLICT, `cannot publish ${where}: the port is in use on the host`);
  if (err.code === 'EADDRNOTAVAIL') return new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot publish ${where}: this host has no address ${spec.hostIp}`);
  if (err.code === 'EACCES') return new CellError(ErrorCodes.PERMISSION_DENIED, `cannot publish ${where}: ports below 1024 need root`);
  return new CellError(ErrorCodes.INTERNAL, `cannot publish ${where}: ${err.message}`);
}

async function publishTcp(spec: PortSpec, target: string): Promise<PortProxy> {
  const sockets = new Set<Socket>();
  let lastTrafficAt: number | undefined;
  const seen = () => (lastTrafficAt = Date.now());
  // Half-open both ways, as TCP itself: one side's EOF is passed on once what it sent is written,
  // and the other may still answer (a client that sends a request, shuts down its writing side and
  // reads the reply: nc, a sink that counts). Each socket closes once both of its directions have
  // ended; an error on either (a reset, a write to a side that is gone) ends both at once.
  const server: Server = createServer({ pauseOnConnect: false, allowHalfOpen: true }, (client) => {
    if (sockets.size >= MAX_CONNECTIONS) return client.destroy();
    const upstream = connect({ host: target, port: spec.guestPort, allowHalfOpen: true });
    sockets.add(client).add(upstream);
    seen();
    client.on('data', seen);
    upstream.on('data', seen);
    const fail = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', fail).on('close', () => sockets.delete(client));
    upstream.on('error', fail).on('close', () => sockets.delete(upstream));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(bindError(spec, err)));
    server.listen(spec.hostPort, spec.hostIp, () => resolve());
  });
  const address = server.address();
  const hostPort = typeof address === 'object' && address ? address.port : spec.hostPort;
  return {
    port: { ...spec, hostPort },
    get lastTrafficAt() {
      return lastTrafficAt;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

async function publishUdp(spec: PortSpec, target: string): Promise<PortProxy> {
  const front = createSocket('udp4');
  let lastTrafficAt: number | undefined;
  const clients = new Map<string, { socket: UdpSocket; timer: NodeJS.Timeout }>();
  const drop = (key: string) => {
    const c = clients.get(key);
    if (!c) return;
    clearTimeout(c.timer);
    c.socket.close();
    clients.delete(key);
  };
  front.on('message', (msg, from) => {
    // Port 0 cannot be answered (dgram's send throws on it, in a handler: celld would end).
    if (from.port === 0) return;
    lastTrafficAt = Date.now();
    const key = `${from.address}:${from.port}`;
    let c = clients.get(key);
    if (!c) {
      if (clients.size >= MAX_UDP_CLIENTS) return;
      const socket = createSocket('udp4');
      socket.on('message', (reply) => {
        front.send(reply, from.port, from.address);
        const entry = clients.get(key);
        if (entry) entry.timer.refresh();
      });
      socket.on('error', () => drop(key));
      c = { socket, timer: setTimeout(() => drop(key), UDP_IDLE_MS) };
      clients.set(key, c);
    }
    c.timer.refresh();
    c.socket.send(msg, spec.guestPort, target);
  });
  front.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    front.once('error', (err) => reject(bindError(spec, err)));
    front.bind(spec.hostPort, spec.hostIp, () => resolve());
  });
  return {
    port: { ...spec, hostPort: front.address().port },
    get lastTrafficAt() {
      return lastTrafficAt;
    },
    close: async () => {
      for (const key of [...clients.keys()]) drop(key);
      front.close();
    },
  };
}
