/**
 * The host side of bench/network.ts: a client run inside the fake internet's host namespace
 * (`nsenter --net`), where celld's published ports listen. It takes one JSON command per line on
 * stdin and answers each with one JSON line on stdout, so one process serves a whole benchmark and
 * its start-up is never timed. Every operation is bounded in time.
 *
 *   {"op":"download","port":P,"path":"/big","timeoutMs":T,"pauseMs":0}  GET over HTTP/1.0, body read
 *     to the end (pauseMs: a reader that stops for that long after the first bytes)
 *     -> {"ms","body","status"}
 *   {"op":"upload","port":P,"bytes":N,"timeoutMs":T}  N bytes sent, the sink's answer (its count) read
 *     -> {"ms","reply"}
 *   {"op":"connect","port":P,"path":"/small","n":N,"timeoutMs":T}  N short GETs one after another
 *     -> {"ms","ok","failed","sample"}
 *
 * `net-peer.ts serve HTTP_PORT SINK_PORT BYTES` is the other end for the loopback ceiling, in a
 * process of its own: GET /big answers BYTES bytes, GET /small "ok\n" (HTTP/1.0, then it closes);
 * the sink reads BYTES bytes and answers their count.
 */
import { connect, createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

interface Command {
  id: number;
  op: 'download' | 'upload' | 'connect';
  host?: string;
  port: number;
  path?: string;
  bytes?: number;
  n?: number;
  timeoutMs?: number;
  /** download: stop reading for this long after the first bytes. */
  pauseMs?: number;
}

const CHUNK = Buffer.alloc(64 * 1024, 0x61);

function bounded<T>(ms: number, what: string, work: (onCleanup: (f: () => void) => void) => Promise<T>): Promise<T> {
  const cleanups: (() => void)[] = [];
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    work((f) => cleanups.push(f)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => {
    clearTimeout(timer);
    for (const f of cleanups) f();
  });
}

/** One GET over HTTP/1.0 (the server closes after the body): status, body bytes, time to close. */
function get(host: string, port: number, path: string, pauseMs = 0): Promise<{ ms: number; status: number; body: number; text: string }> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const socket = connect({ host, port });
    // A slow reader: nothing read for a while after the request (the server's side fills up).
    if (pauseMs) socket.once('data', () => (socket.pause(), setTimeout(() => socket.resume(), pauseMs)));
    let head = Buffer.alloc(0);
    let headerEnd = -1;
    let body = 0;
    let text = '';
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(`GET ${path} HTTP/1.0\r\nHost: bench\r\n\r\n`));
    socket.on('data', (c: Buffer) => {
      if (headerEnd >= 0) {
        body += c.length;
        if (text.length < 64) text += c.subarray(0, 64).toString('latin1');
        return;
      }
      head = Buffer.concat([head, c]);
      headerEnd = head.indexOf('\r\n\r\n');
      if (headerEnd >= 0) {
        const rest = head.subarray(headerEnd + 4);
        body += rest.length;
        text = rest.subarray(0, 64).toString('latin1');
      }
    });
    socket.on('error', reject);
    socket.on('close', () => {
      const status = Number(/^HTTP\/1\.[01] (\d+)/.exec(head.toString('latin1'))?.[1] ?? 0);
      resolve({ ms: performance.now() - t, status, body, text });
    });
  });
}

async function download(c: Command) {
  return bounded(c.timeoutMs ?? 120_000, 'download', async () => {
    const r = await get(c.host ?? '127.0.0.1', c.port, c.path ?? '/big', c.pauseMs);
    return { ms: r.ms, body: r.body, status: r.status };
  });
}

/** Sends `bytes` (no half-close: the sink knows how many to expect) and waits for its answer line. */
async function upload(c: Command) {
  let socket: Socket | undefined;
  return bounded(
    c.timeoutMs ?? 120_000,
    'upload',
    (onCleanup) =>
      new Promise<{ ms: number; reply: string }>((resolve, reject) => {
        const t = performance.now();
        socket = connect({ host: c.host ?? '127.0.0.1', port: c.port });
        onCleanup(() => socket?.destroy());
        let reply = '';
        let left = c.bytes!;
        const pump = () => {
          while (left > 0) {
            const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
            left -= piece.length;
            if (!socket!.write(piece)) return void socket!.once('drain', pump);
          }
        };
        socket.on('connect', pump);
        socket.on('data', (d: Buffer) => {
          reply += d.toString();
          if (reply.includes('\n')) {
            const ms = performance.now() - t;
            socket!.destroy();
            resolve({ ms, reply: reply.trim() });
          }
        });
        socket.on('error', reject);
        socket.on('close', () => reject(new Error(`upload: closed before an answer (${reply || 'nothing'}; ${left} bytes unsent)`)));
      }),
  );
}

async function connectRate(c: Command) {
  return bounded(c.timeoutMs ?? 120_000, 'connect', async () => {
    const t = performance.now();
    let ok = 0;
    let failed = 0;
    let sample = '';
    for (let i = 0; i < c.n!; i++) {
      try {
        const r = await get(c.host ?? '127.0.0.1', c.port, c.path ?? '/small');
        if (r.status === 200) ok++;
        else failed++;
        sample ||= r.text;
      } catch {
        failed++;
      }
    }
    return { ms: performance.now() - t, ok, failed, sample };
  });
}

/** The loopback servers: as cheap as Node sockets get, nothing but the transfer itself. */
function serve(httpPort: number, sinkPort: number, bytes: number): void {
  createServer((socket) => {
    let request = '';
    socket.on('error', () => {});
    socket.on('data', function onData(c: Buffer) {
      request += c.toString('latin1');
      if (!request.includes('\r\n\r\n')) return;
      socket.off('data', onData);
      const path = /^GET (\S+)/.exec(request)?.[1];
      if (path === '/small') return void socket.end('HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n');
      if (path !== '/big') return void socket.end('HTTP/1.0 404 Not Found\r\n\r\n');
      socket.write(`HTTP/1.0 200 OK\r\nContent-Length: ${bytes}\r\n\r\n`);
      let left = bytes;
      const pump = () => {
        while (left > 0) {
          const piece = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
          left -= piece.length;
          if (!socket.write(piece)) return void socket.once('drain', pump);
        }
        socket.end();
      };
      pump();
    });
  }).listen(httpPort, '127.0.0.1');
  createServer((socket) => {
    let got = 0;
    socket.on('error', () => {});
    socket.on('data', (c: Buffer) => {
      const before = got;
      got += c.length;
      if (before < bytes && got >= bytes) socket.end(`${got}\n`);
    });
  }).listen(sinkPort, '127.0.0.1');
}

if (process.argv[2] === 'serve') {
  serve(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]));
  // Ends with its parent (stdin closes).
  process.stdin.on('end', () => process.exit(0)).resume();
} else {
  client();
}

function client(): void {
  const ops = { download, upload, connect: connectRate };
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const cmd = JSON.parse(line) as Command;
    ops[cmd.op](cmd).then(
      (result) => process.stdout.write(JSON.stringify({ id: cmd.id, ...result }) + '\n'),
      (err: Error) => process.stdout.write(JSON.stringify({ id: cmd.id, error: err.message }) + '\n'),
    );
  });
  // Our parent went away: so do we.
  lines.on('close', () => process.exit(0));
  process.stdout.write(JSON.stringify({ ready: true }) + '\n');
}
