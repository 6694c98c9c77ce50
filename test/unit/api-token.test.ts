import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isExpired, parseToken, scopeAllows } from '../../src/domain/api-token.js';
import { isLoopbackHostname } from '../../src/domain/network.js';
import { parseCelldArgs } from '../../src/server/listen-options.js';

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
