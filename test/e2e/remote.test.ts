import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { CellClient } from '../../src/sdk/index.js';
import { CellError } from '../../src/domain/errors.js';
import { CELL_BIN, TestHome } from '../helpers/cell-home.js';

/**
 * celld's TCP listener (docs/remote.md): the API over TLS with the certificate celld generated,
 * behind bearer tokens of three scopes; revoked and expired tokens fail at once; host paths are
 * refused; too many requests are refused with rate_limited. No VM boots: the gate is in front of
 * everything, and a refused create must leave nothing.
 */
describe('remote API', () => {
  let h: TestHome;
  let url: string;
  let fingerprint: string;
  let cert: string;
  const tokens: Record<string, string> = {};
  const clients: CellClient[] = [];

  const remote = async (token: string | undefined, extra: { tlsFingerprint?: string } = {}) => {
    const c = await CellClient.connect({ url, token, tlsFingerprint: fingerprint, lazy: true, ...extra });
    clients.push(c);
    return c;
  };
  /** A raw request with the generated certificate trusted: status and error code. */
  const raw = (method: string, path: string, token?: string) =>
    new Promise<{ status: number; code?: string }>((resolve, reject) => {
      const u = new URL(path, url);
      const req = https.request(
        { hostname: u.hostname, port: u.port, path: u.pathname, method, ca: cert, checkServerIdentity: () => undefined, headers: token ? { authorization: `Bearer ${token}` } : {} },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, code: body ? (JSON.parse(body) as { error?: { code: string } }).error?.code : undefined }));
        },
      );
      req.on('error', reject);
      req.end();
    });
  const codeOf = async (p: Promise<unknown>) => {
    try {
      await p;
      return 'ok';
    } catch (err) {
      return err instanceof CellError ? err.code : String(err);
    }
  };

  before(async () => {
    h = new TestHome({ CELL_LISTEN: '127.0.0.1:0' });
    await h.ok(['ps']); // starts celld, listening on the socket and on TCP
    ({ url, fingerprint } = JSON.parse(readFileSync(join(h.home, 'remote.json'), 'utf8')) as { url: string; fingerprint: string });
    cert = readFileSync(join(h.home, 'tls', 'cert.pem'), 'utf8');
    for (const [name, scope] of [['admin', 'admin'], ['ci', 'write'], ['viewer', 'read']] as const) {
      tokens[name] = (await h.ok(['token', 'create', '--name', name, '--scope', scope])).stdout.trim();
    }
    tokens.brief = (await h.ok(['token', 'create', '--name', 'brief', '--expires', '2s'])).stdout.trim();
  });

  after(async () => {
    for (const c of clients) c.close();
    await h?.cleanup();
  });

  test('tokens: TLS with the generated certificate, 401 without a valid token, 403 out of scope, revoked and expired ones fail at once', async () => {
    assert.match(url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.match(fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.match(tokens.ci!, /^cell_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);

    // A write token lists and would create; the SDK pinned the self-signed certificate by its fingerprint.
    const ci = await remote(tokens.ci);
    assert.deepEqual(await ci.vms.list(), []);
    const info = await ci.info();
    assert.equal(info.home, h.home);
    assert.deepEqual(info.remote, { url, fingerprint });

    // No token, a made-up one, a malformed one: 401, the same answer.
    assert.deepEqual(await raw('GET', '/v1/vms'), { status: 401, code: 'unauthenticated' });
    assert.deepEqual(await raw('GET', '/v1/vms', `cell_000000000000_${'A'.repeat(43)}`), { status: 401, code: 'unauthenticated' });
    assert.deepEqual(await raw('GET', '/v1/vms', tokens.ci!.slice(0, -1) + (tokens.ci!.endsWith('A') ? 'B' : 'A')), { status: 401, code: 'unauthenticated' });
    assert.deepEqual(await raw('GET', '/v1/vms', 'nonsense'), { status: 401, code: 'unauthenticated' });

    // Read only looks: its create is refused before anything is made.
    const viewer = await remote(tokens.viewer);
    assert.deepEqual(await viewer.vms.list(), []);
    assert.equal(await codeOf(viewer.vms.create({ image: 'busybox' })), 'permission_denied');
    assert.equal(await codeOf(viewer.volumes.create('v1')), 'permission_denied');
    assert.equal(JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout).length, 0);
    assert.equal(JSON.parse((await h.ok(['volume', 'ls', '--format', 'json'])).stdout).length, 0);

    // Tokens are the admin's: a write token may not list or make them.
    assert.equal(await codeOf(ci.tokens.list()), 'permission_denied');
    assert.equal(await codeOf(ci.tokens.create('more', { scope: 'admin' })), 'permission_denied');
    // The scope is checked on the route the router matched, not on the URL as written.
    assert.deepEqual(await raw('GET', '/v1/%74okens', tokens.ci), { status: 403, code: 'permission_denied' });
    assert.deepEqual(await raw('GET', '/v1/tokens/', tokens.ci), { status: 404, code: 'not_found' });
    const admin = await remote(tokens.admin);
    const listed = await admin.tokens.list();
    assert.deepEqual(listed.map((t) => t.name).sort(), ['admin', 'brief', 'ci', 'viewer']);
    assert.ok(listed.find((t) => t.name === 'ci')!.lastUsedAt, 'a used token says when');
    // The secret is all after `cell_<id>_` (base64url has underscores of its own: splitting on them
    // once picked a fragment of a few characters that turned up in the listing by chance).
    const secret = tokens.ci!.slice(tokens.ci!.indexOf('_', 'cell_'.length) + 1);
    assert.equal(secret.length, 43);
    assert.ok(!JSON.stringify(listed).includes(secret), 'no secret is ever listed');

    // Revoked on celld's host: the same client fails on its next request.
    await h.ok(['token', 'rm', 'ci']);
    assert.equal(await codeOf(ci.vms.list()), 'unauthenticated');

    // Expired: refused, and it says so.
    const brief = await remote(tokens.brief);
    await new Promise((r) => setTimeout(r, 2100));
    await assert.rejects(brief.vms.list(), (err: CellError) => err.code === 'unauthenticated' && /expired/.test(err.message));

    // The wrong certificate (a pinned fingerprint that is not celld's): no request is sent.
    const wrong = fingerprint.replace(/^../, fingerprint.startsWith('00') ? '11' : '00');
    assert.equal(await codeOf(CellClient.connect({ url, token: tokens.admin, tlsFingerprint: wrong })), 'permission_denied');
    // Nothing pinned: a self-signed certificate is not trusted, and the error says what to set.
    await assert.rejects(CellClient.connect({ url, token: tokens.admin }), /self-signed certificate.*CELL_TLS_FINGERPRINT/);
  });

  test('host paths are refused over TCP; the CLI works remotely from CELL_HOST; a flood is rate-limited', async () => {
    const admin = await remote(tokens.admin);
    await assert.rejects(admin.snapshots.import('/etc/passwd'), (err: CellError) => err.code === 'permission_denied' && /host paths are refused over TCP/.test(err.message));
    await assert.rejects(admin.images.export('busybox', '/tmp/cellt-never.tar'), /host paths are refused over TCP/);

    // The CLI from "another machine": no CELL_HOME of its own, the listener's URL, a token, the fingerprint.
    const env = { CELL_HOME: '/nonexistent-cell-home', CELL_HOST: url, CELL_TOKEN: tokens.admin, CELL_TLS_FINGERPRINT: fingerprint };
    const ps = await h.cell(['ps'], { env });
    assert.equal(ps.code, 0, ps.stderr);
    assert.match(ps.stdout, /^VM ID\s+NAME/);
    const ls = await h.cell(['token', 'ls'], { env });
    assert.match(ls.stdout, /^viewer\s|\sviewer\s/m);
    const refused = await h.cell(['volume', 'export', 'none', '/tmp/cellt-x.tar'], { env: { ...env, CELL_TOKEN: tokens.viewer } });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /^error: the token "viewer" has the read scope: it may not POST/m);

    // 50 a second, 100 at once: a burst of 300 gets some 429s (the first 100 pass at once), and the token works again after a pause.
    const viewer = await remote(tokens.viewer);
    const codes = await Promise.all(Array.from({ length: 300 }, () => codeOf(viewer.ping())));
    assert.ok(codes.includes('rate_limited'), `codes: ${[...new Set(codes)].join(', ')}`);
    assert.ok(codes.filter((c) => c === 'ok').length >= 90);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await codeOf(viewer.ping()), 'ok');
  });

  test("the terminal WebSocket: token as a subprotocol (never echoed), write scope, errors as messages; the dashboard's files need no token; revoking a token ends its open streams", async () => {
    const ws = (path: string, protocols: string[]) =>
      new Promise<{ status?: number; protocol?: string; messages: string[]; close?: number }>((resolve) => {
        // ws types this check as boolean; Node's TLS takes undefined for "fine".
        const socket = new WebSocket(new URL(path, url.replace(/^https/, 'wss')), protocols, { ca: cert, checkServerIdentity: (() => undefined) as unknown as () => boolean });
        const messages: string[] = [];
        socket.on('unexpected-response', (req, res) => {
          resolve({ status: res.statusCode, messages });
          req.destroy(); // listening for this event makes ending the refused request ours
        });
        socket.on('message', (data, binary) => messages.push(binary ? `<${(data as Buffer).length} bytes>` : String(data)));
        socket.on('close', (code) => resolve({ protocol: socket.protocol, messages, close: code }));
        socket.on('error', () => {});
      });
    const proto = 'cellvm.terminal.v1';
    assert.equal((await ws('/v1/vms/nope/terminal', [proto])).status, 401);
    assert.equal((await ws('/v1/vms/nope/terminal', [proto, `bearer.${tokens.viewer}`])).status, 403, 'a read token opens no shell');
    const admin = (await h.ok(['token', 'create', '--name', 'ws-admin', '--scope', 'admin'])).stdout.trim();
    const refused = await ws('/v1/vms/nope/terminal', [proto, `bearer.${admin}`]);
    assert.equal(refused.protocol, proto, 'the handshake names the terminal protocol, not the token');
    assert.equal(refused.close, 1008);
    assert.equal((JSON.parse(refused.messages[0]!) as { type: string; error: { code: string } }).error.code, 'not_found');
    // A frame over the 64 KiB limit ends that socket, quietly: nothing at error level in celld.log.
    const oversized = await new Promise<number>((resolve) => {
      const socket = new WebSocket(new URL('/v1/vms/nope/terminal', url.replace(/^https/, 'wss')), [proto, `bearer.${admin}`], {
        ca: cert,
        checkServerIdentity: (() => undefined) as unknown as () => boolean,
      });
      socket.on('open', () => socket.send(Buffer.alloc(70 * 1024)));
      socket.on('close', (code) => resolve(code));
      socket.on('error', () => {});
    });
    assert.ok([1008, 1009].includes(oversized), `closed: ${oversized}`);
    await new Promise((r) => setTimeout(r, 200));
    assert.doesNotMatch(readFileSync(join(h.home, 'celld.log'), 'utf8'), /"level":50[^\n]*(payload|WebSocket)/i);
    // A refused upgrade's connection is closed after its answer (Node leaves such a socket to us).
    const closed = await new Promise<{ status: string; closedMs: number }>((resolve, reject) => {
      const started = Date.now();
      let text = '';
      const sock = tls.connect({ host: '127.0.0.1', port: Number(new URL(url).port), ca: cert, checkServerIdentity: () => undefined }, () =>
        sock.write('GET /v1/vms/nope/terminal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'),
      );
      sock.on('data', (c: Buffer) => (text += c));
      sock.on('close', () => resolve({ status: text.split('\r\n')[0]!, closedMs: Date.now() - started }));
      sock.on('error', reject);
      setTimeout(() => {
        sock.destroy();
        resolve({ status: text.split('\r\n')[0]!, closedMs: Infinity });
      }, 5000).unref();
    });
    assert.match(closed.status, /^HTTP\/1\.1 401/);
    assert.ok(closed.closedMs < 5000, 'celld closed the refused upgrade');
    // A plain GET is told to upgrade.
    assert.equal((await raw('GET', '/v1/vms/nope/terminal', admin)).status, 426);

    // The page itself: public, no outside sources allowed.
    const ui = (path: string) =>
      new Promise<{ status: number; csp: string; body: string }>((resolve, reject) => {
        https
          .get(`${url}${path}`, { ca: cert, checkServerIdentity: () => undefined }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, csp: String(res.headers['content-security-policy']), body }));
          })
          .on('error', reject);
      });
    const page = await ui('/ui/');
    assert.equal(page.status, 200);
    assert.match(page.csp, /default-src 'self'/);
    assert.match(page.csp, /connect-src 'self'/);
    assert.match(page.body, /<script src="app.js">/);
    assert.equal((await ui('/ui/nothing.js')).status, 404);
    assert.equal((await ui('/ui/..%2F..%2Fpackage.json')).status, 404, 'only the built files, by name');

    // An open event stream of a token ends when the token is revoked on celld's host.
    // 30 days: beyond what one Node timer holds (24.8 days), which would fire at once.
    const watcher = (await h.ok(['token', 'create', '--name', 'watcher', '--scope', 'read', '--expires', '30d'])).stdout.trim();
    const client = await remote(watcher);
    const seen: string[] = [];
    const streaming = (async () => {
      for await (const event of client.events.stream()) seen.push(event.action);
    })().then(
      () => 'ended',
      (err: CellError) => err.code ?? String(err),
    );
    assert.equal(await Promise.race([streaming, new Promise((r) => setTimeout(() => r('open'), 500))]), 'open', 'a valid token keeps its stream');
    // 32 streams open at once per token, the 33rd refused.
    const opened: http.ClientRequest[] = [];
    const openStream = () =>
      new Promise<number>((resolve, reject) => {
        const req = https.get(`${url}/v1/events`, { ca: cert, checkServerIdentity: () => undefined, agent: false, headers: { authorization: `Bearer ${watcher}` } }, (res) => resolve(res.statusCode ?? 0));
        req.on('error', () => {});
        opened.push(req);
        setTimeout(() => reject(new Error('no answer')), 5000).unref();
      });
    const statuses = [];
    for (let i = 0; i < 32; i++) statuses.push(await openStream());
    assert.deepEqual(statuses.slice(0, 31), Array(31).fill(200));
    assert.equal(statuses[31], 429, 'the 33rd stream of one token is refused');
    await h.ok(['token', 'rm', 'watcher']);
    const outcome = await Promise.race([streaming, new Promise((r) => setTimeout(() => r('still open'), 5000))]);
    assert.notEqual(outcome, 'still open', 'the stream ended with the revoke');
    for (const req of opened) req.destroy();
  });

  test('celld refuses plain HTTP off loopback, and a bad --listen, before it starts', async () => {
    const run = (args: string[]) =>
      new Promise<{ code: number; stderr: string }>((resolve) => {
        execFile(join(CELL_BIN, '..', 'celld'), args, { env: { ...process.env, CELL_HOME: join(h.home, 'never') } }, (err, _out, stderr) =>
          resolve({ code: (err as { code?: number } | null)?.code ?? 0, stderr }),
        );
      });
    const http = await run(['--listen', '0.0.0.0:0', '--insecure-http']);
    assert.equal(http.code, 1);
    assert.match(http.stderr, /plain HTTP only on a loopback address/);
    const bad = await run(['--listen', 'nowhere']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--listen takes HOST:PORT/);
  });
});
