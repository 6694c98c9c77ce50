import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pullImage } from '../../src/image/pull.js';
import { pushImage } from '../../src/image/push.js';
import { login, logout } from '../../src/image/registry/login.js';
import { isCellError } from '../../src/domain/errors.js';
import { startRegistry, type RunningRegistry } from './registry-harness.js';
import { startTokenServer, type TokenServer } from './token-server.js';
import { storeImage, tarOfTree } from './image-builder.js';
import { imageRows, makeStore, storeFiles } from './helpers.js';

const FAST_RETRY = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };

function code(c: string) {
  return (err: unknown) => isCellError(err) && err.code === c;
}

describe('basic auth (htpasswd)', () => {
  let registry: RunningRegistry;
  let dir: string;
  before(async () => {
    registry = await startRegistry({ kind: 'basic', user: 'alice', password: 's3cret' });
    dir = mkdtempSync('/tmp/cellt-auth-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('login stores 0600 credentials that push and pull use; a wrong password is refused; logout forgets', async () => {
    const creds = join(dir, 'credentials.json');
    await assert.rejects(login({ registry: registry.host, username: 'alice', password: 'wrong', credentialsPath: creds }), code('unauthorized'));
    await login({ registry: registry.host, username: 'alice', password: 's3cret', credentialsPath: creds });
    assert.equal(statSync(creds).mode & 0o777, 0o600);

    const src = join(dir, 'src');
    const image = await storeImage(src, { layers: [{ tar: tarOfTree({ hello: 'basic' }), compression: 'gzip' }] });
    const ref = `${registry.host}/private/img:1`;
    await assert.rejects(pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY, dockerConfigPath: null }), code('unauthorized'));
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, credentialsPath: creds, retry: FAST_RETRY });

    const s = makeStore();
    try {
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, credentialsPath: creds, dockerConfigPath: null, retry: FAST_RETRY });
      assert.equal(pulled.digest, image.manifestDigest);
    } finally {
      s.cleanup();
    }

    // Docker's config.json works too.
    const dockerConfig = join(dir, 'docker.json');
    writeFileSync(dockerConfig, JSON.stringify({ auths: { [`http://${registry.host}`]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }));
    const s2 = makeStore();
    try {
      await pullImage({ reference: ref, storeRoot: s2.root, db: s2.db, dockerConfigPath: dockerConfig, retry: FAST_RETRY });
    } finally {
      s2.cleanup();
    }

    // A wrong password: a clear error, and nothing left behind.
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ auths: { [registry.host]: { auth: Buffer.from('alice:nope').toString('base64') } } }));
    const s3 = makeStore();
    try {
      await assert.rejects(pullImage({ reference: ref, storeRoot: s3.root, db: s3.db, credentialsPath: bad, dockerConfigPath: null, retry: FAST_RETRY }), (err: unknown) => {
        assert.ok(isCellError(err) && err.code === 'unauthorized', String(err));
        assert.match((err as Error).message, /access denied \(401/);
        return true;
      });
      assert.deepEqual(storeFiles(s3.root), []);
      assert.equal(imageRows(s3.db), 0);
    } finally {
      s3.cleanup();
    }

    assert.equal(await logout({ registry: registry.host, credentialsPath: creds }), true);
    assert.deepEqual(JSON.parse(readFileSync(creds, 'utf8')).auths, {});
  });
});

describe('bearer token auth (Distribution auth: token + a JWT token server)', () => {
  let registry: RunningRegistry;
  let tokens: TokenServer;
  let dir: string;
  before(async () => {
    tokens = await startTokenServer({ user: 'bob', password: 'hunter2' });
    registry = await startRegistry({ kind: 'token', realm: tokens.realm, service: tokens.service, issuer: tokens.issuer, certPath: tokens.certPath });
    dir = mkdtempSync('/tmp/cellt-token-');
  });
  after(async () => {
    await registry?.stop();
    await tokens?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('push and pull follow the challenge, request per-repository scopes and reuse the token', async () => {
    const creds = join(dir, 'credentials.json');
    await assert.rejects(login({ registry: registry.host, username: 'bob', password: 'bad', credentialsPath: creds }), code('unauthorized'));
    await login({ registry: registry.host, username: 'bob', password: 'hunter2', credentialsPath: creds });

    const src = join(dir, 'src');
    const image = await storeImage(src, {
      layers: [
        { tar: tarOfTree({ a: '1' }), compression: 'gzip' },
        { tar: tarOfTree({ b: '2' }), compression: 'gzip' },
        { tar: tarOfTree({ c: '3' }), compression: 'zstd' },
      ],
    });
    const ref = `${registry.host}/team/app:v1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, credentialsPath: creds, retry: FAST_RETRY });
    assert.ok(tokens.issued.some((s) => s.includes('repository:team/app:pull,push')));

    tokens.issued.length = 0;
    const s = makeStore();
    try {
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, credentialsPath: creds, dockerConfigPath: null, retry: FAST_RETRY });
      assert.equal(pulled.digest, image.manifestDigest);
      // One token for the pull scope, reused for the manifest, the config and all three layers.
      assert.deepEqual(tokens.issued, [['repository:team/app:pull']]);
    } finally {
      s.cleanup();
    }

    const s2 = makeStore();
    try {
      await assert.rejects(pullImage({ reference: ref, storeRoot: s2.root, db: s2.db, dockerConfigPath: null, retry: FAST_RETRY }), code('unauthorized'));
      assert.deepEqual(storeFiles(s2.root), []);
    } finally {
      s2.cleanup();
    }
  });
});
