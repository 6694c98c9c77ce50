import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isExpired, parseToken, scopeAllows } from '../../src/domain/api-token.js';
import { isLoopbackHostname } from '../../src/domain/network.js';
import { parseCelldArgs } from '../../src/server/listen-options.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_REMOTE_LIMITS } from '../../src/server/remote-access.js';
import { buildApp } from '../../src/server/app.js';
import { openDatabase } from '../../src/store/database.js';
import { TokenStore } from '../../src/store/token-store.js';
import { Tokens } from '../../src/engine/tokens.js';
import type { Engine } from '../../src/engine/engine.js';

test('token scopes: read looks, write does all but tokens, admin all', () => {
  assert.equal(scopeAllows('read', 'GET', '/v1/vms'), true);
  assert.equal(scopeAllows('read', 'POST', '/v1/vms'), false);
  assert.equal(scopeAllows('read', 'DELETE', '/v1/vms/x'), false);
  assert.equal(scopeAllows('read', 'GET', '/v1/tokens'), false);
  assert.equal(scopeAllows('write', 'POST', '/v1/vms/run'), true);
  assert.equal(scopeAllows('write', 'GET', '/v1/tokens'), false);
  assert.equal(scopeAllows('write', 'DELETE', '/v1/tokens/ci'), false);
  assert.equal(scopeAllows('admin', 'POST', '/v1/tokens'), true);
  assert.equal(scopeAllows('write', 'DELETE', '/v1/tokens/:ref'), false);
  assert.equal(scopeAllows('write', 'POST', '/v1/setup'), false, 'set-up installs host packages as root');
  assert.equal(scopeAllows('write', 'POST', '/v1/registries/login'), false, "celld's registry credentials");
  assert.equal(scopeAllows('admin', 'POST', '/v1/registries/login'), true);
  assert.equal(parseToken(`cell_0123456789ab_${'x'.repeat(43)}`)?.id, '0123456789ab');
  assert.equal(parseToken(`cell_0123456789ab_${'x'.repeat(42)}`), null);
  assert.equal(parseToken(`Bearer cell_0123456789ab_${'x'.repeat(43)}`), null);
  assert.equal(isExpired({ expiresAt: null }), false);
  assert.equal(isExpired({ expiresAt: '2020-01-01T00:00:00Z' }), true);
});

test("celld's --listen: HOST:PORT, TLS unless plain HTTP on loopback", () => {
  assert.deepEqual(parseCelldArgs(['--listen', '0.0.0.0:7070'], {}).listen, { host: '0.0.0.0', port: 7070 });
  assert.deepEqual(parseCelldArgs(['--listen', '[::1]:0'], {}).listen, { host: '::1', port: 0 });
  assert.deepEqual(parseCelldArgs([], { CELL_LISTEN: '127.0.0.1:9' }).listen, { host: '127.0.0.1', port: 9 });
  assert.equal(parseCelldArgs([], {}).listen, undefined);
  assert.equal(parseCelldArgs(['--listen', '127.0.0.1:7070', '--insecure-http'], {}).insecureHttp, true);
  assert.throws(() => parseCelldArgs(['--listen', '10.0.0.5:7070', '--insecure-http'], {}), /loopback/);
  assert.throws(() => parseCelldArgs(['--listen', '127.0.0.1:70000'], {}), /HOST:PORT/);
  assert.throws(() => parseCelldArgs(['--listen', '1.2.3.4:1', '--tls-cert', 'c.pem'], {}), /go together/);
  assert.throws(() => parseCelldArgs(['--insecure-http'], {}), /for --listen/);
  assert.throws(() => parseCelldArgs(['--bogus'], {}), /celld --help/);
  assert.equal(isLoopbackHostname('127.0.0.2'), true);
  assert.equal(isLoopbackHostname('[::1]'), true);
  assert.equal(isLoopbackHostname('0.0.0.0'), false);
});

test("celld's token limits: --token-rate and --token-creates (or CELL_TOKEN_RATE, CELL_TOKEN_CREATES), whole numbers in range", () => {
  assert.deepEqual(parseCelldArgs([], {}).limits, DEFAULT_REMOTE_LIMITS);
  assert.deepEqual(parseCelldArgs(['--token-rate', '5', '--token-creates', '2'], {}).limits, { requestsPerSecond: 5, concurrentCreates: 2 });
  assert.deepEqual(parseCelldArgs([], { CELL_TOKEN_RATE: '7', CELL_TOKEN_CREATES: '3' }).limits, { requestsPerSecond: 7, concurrentCreates: 3 });
  assert.throws(() => parseCelldArgs(['--token-rate', '0'], {}), /--token-rate takes a whole number from 1/);
  assert.throws(() => parseCelldArgs(['--token-creates', '1.5'], {}), /--token-creates takes a whole number/);
});

test('the TCP listener holds each token to its limits: a burst of twice the rate, then 429 rate_limited; other tokens unaffected', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cellt-limits-'));
  const db = openDatabase(join(dir, 'cell.db'));
  try {
    const tokens = new Tokens(new TokenStore(db));
    const engine = new Proxy({ tokens }, { get: (t, name) => (name in t ? t[name as 'tokens'] : undefined) }) as unknown as Engine;
    const app = buildApp(engine, false, { remote: { limits: { requestsPerSecond: 2, concurrentCreates: 1 } } });
    const a = tokens.create({ name: 'a', scope: 'read' }).secret;
    const b = tokens.create({ name: 'b', scope: 'read' }).secret;
    const ping = async (token: string) => (await app.inject({ method: 'GET', url: '/v1/ping', headers: { authorization: `Bearer ${token}` } })).statusCode;
    const burst = [];
    for (let i = 0; i < 6; i++) burst.push(await ping(a));
    assert.deepEqual(burst.slice(0, 4), [200, 200, 200, 200], 'twice the rate at once');
    assert.ok(burst.slice(4).includes(429), `then refused: ${burst.join(' ')}`);
    assert.equal(await ping(b), 200, 'a token has its own bucket');
    await app.close();
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
