/**
 * celld knows who calls it (SO_PEERCRED) and reaches the host paths a caller names with that
 * caller's own file access, not root's: a member of celld's group can no longer copy /etc/shadow
 * into a VM, write into /root with a copy-out, or export a snapshot over a file they could not
 * write. The real HTTP server on a real unix socket, real callers of other uids (child processes),
 * the fake backend (its "guest" is the real agent in --stdio mode on this host).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/server/app.js';
import { hostCreds } from '../../src/host/host-creds.js';
import { openFakeEngine, type FakeEngine } from './harness.js';

const MEMBER = { uid: 65533, gid: 65534 }; // in the socket's group (nogroup) by its primary gid
const STRANGER = { uid: 65533, gid: 65533 }; // in no group of celld's

let fake: FakeEngine;
let app: FastifyInstance;
let dir: string;
let socket: string;
let vmName: string;

before(async () => {
  assert.ok(hostCreds(), 'the host-creds addon is built (npm run build)');
  fake = await openFakeEngine();
  dir = mkdtempSync('/tmp/cellc-');
  chmodSync(dir, 0o755);
  socket = join(dir, 'celld.sock');
  app = buildApp(fake.engine, false, { socketGroup: 65534 });
  await app.listen({ path: socket });
  // Open to all on purpose: the credential check must hold even when the socket's mode does not.
  chmodSync(socket, 0o666);
  const vm = await fake.engine.vms.create({ image: 'busybox', name: 'callers' });
  await fake.engine.vms.start(vm.id);
  vmName = vm.name;
});

after(async () => {
  await app?.close();
  await fake?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** One request to celld from a process of `who` (no supplementary groups); async: celld serves from this process. */
async function request(who: { uid: number; gid: number }, method: string, path: string, body?: unknown): Promise<{ status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const script = `
    const req = require('http').request({ socketPath: ${JSON.stringify(socket)}, method: ${JSON.stringify(method)}, path: ${JSON.stringify(path)}, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = ''; res.on('data', (c) => (text += c)); res.on('end', () => { console.log(JSON.stringify({ status: res.statusCode, text })); });
    });
    req.on('error', (e) => { console.log(JSON.stringify({ status: 0, text: JSON.stringify({ error: { code: e.code, message: e.message } }) })); });
    req.end(${JSON.stringify(body === undefined ? '' : JSON.stringify(body))});`;
  const child = spawn(process.execPath, ['-e', script], { uid: who.uid, gid: who.gid, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  assert.equal(code, 0, stderr);
  const { status, text } = JSON.parse(stdout) as { status: number; text: string };
  return { status, body: text ? JSON.parse(text) : {} };
}

/** A folder the member owns, with one file in it. */
function memberFolder(): string {
  const folder = mkdtempSync(join(dir, 'member-'));
  chownSync(folder, MEMBER.uid, MEMBER.gid);
  writeFileSync(join(folder, 'notes.txt'), 'the member wrote this\n');
  chownSync(join(folder, 'notes.txt'), MEMBER.uid, MEMBER.gid);
  return folder;
}

test('a caller outside the socket group is refused even when the socket lets them connect', async () => {
  const r = await request(STRANGER, 'GET', '/v1/ping');
  assert.equal(r.status, 403);
  assert.equal(r.body.error?.code, 'permission_denied');
  assert.match(r.body.error!.message, /uid 65533 may not use celld/);
  assert.equal((await request(MEMBER, 'GET', '/v1/ping')).status, 200, 'a member of the group is let in');
});

test("copy-in reads with the caller's access: their own files go in, /etc/shadow does not", async () => {
  const guestDir = mkdtempSync(join(dir, 'guest-'));
  const denied = await request(MEMBER, 'POST', `/v1/vms/${vmName}/files/copy-in`, { hostPath: '/etc/shadow', guestPath: join(guestDir, 'shadow') });
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
  assert.match(denied.body.error!.message, /\/etc\/shadow \(host\): permission denied/);
  assert.equal(existsSync(join(guestDir, 'shadow')), false, 'nothing reached the guest');

  const folder = memberFolder();
  const ok = await request(MEMBER, 'POST', `/v1/vms/${vmName}/files/copy-in`, { hostPath: join(folder, 'notes.txt'), guestPath: join(guestDir, 'notes.txt') });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(readFileSync(join(guestDir, 'notes.txt'), 'utf8'), 'the member wrote this\n');
});

test("copy-out writes with the caller's access: not into /root, and what it writes is the caller's", async () => {
  const guestDir = mkdtempSync(join(dir, 'guest-'));
  writeFileSync(join(guestDir, 'result.txt'), 'from the guest\n');
  const target = '/root/cellvm-caller-access-test.txt';
  rmSync(target, { force: true });
  const denied = await request(MEMBER, 'POST', `/v1/vms/${vmName}/files/copy-out`, { guestPath: join(guestDir, 'result.txt'), hostPath: target });
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
  assert.equal(existsSync(target), false, 'nothing was written into /root');

  const folder = memberFolder();
  const ok = await request(MEMBER, 'POST', `/v1/vms/${vmName}/files/copy-out`, { guestPath: join(guestDir, 'result.txt'), hostPath: join(folder, 'result.txt') });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  const st = statSync(join(folder, 'result.txt'));
  assert.deepEqual([st.uid, st.gid], [MEMBER.uid, MEMBER.gid], 'the copy belongs to the caller');
  assert.equal(readFileSync(join(folder, 'result.txt'), 'utf8'), 'from the guest\n');

  // A directory the caller may list but not write: refused, and no temporary left in it.
  const readOnly = mkdtempSync(join(dir, 'ro-'));
  chmodSync(readOnly, 0o755);
  const r = await request(MEMBER, 'POST', `/v1/vms/${vmName}/files/copy-out`, { guestPath: guestDir, hostPath: join(readOnly, 'tree') });
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.deepEqual(spawnSync('ls', ['-A', readOnly], { encoding: 'utf8' }).stdout, '');
});

test("build and template files are read with the caller's access", async () => {
  const secret = join(mkdtempSync(join(dir, 'private-')), 'Cellfile');
  writeFileSync(secret, 'from = "busybox"\n[[step]]\nrun = "true"\n');
  chmodSync(join(secret, '..'), 0o700);
  const build = await request(MEMBER, 'POST', '/v1/builds', { file: secret });
  assert.equal(build.status, 403, JSON.stringify(build.body));
  assert.match(build.body.error!.message, /the build file .* \(host\): permission denied/);
  const template = await request(MEMBER, 'POST', '/v1/templates/build', { file: secret });
  assert.equal(template.status, 403, JSON.stringify(template.body));
});

test('snapshot export and import go through the caller too', async () => {
  await fake.engine.snapshots.take(vmName, { name: 'callers-snap' });
  const denied = await request(MEMBER, 'POST', '/v1/snapshots/callers-snap/export', { file: '/root/cellvm-caller-access.tar' });
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
  assert.equal(existsSync('/root/cellvm-caller-access.tar'), false);

  const folder = memberFolder();
  const archive = join(folder, 'snap.tar');
  const ok = await request(MEMBER, 'POST', '/v1/snapshots/callers-snap/export', { file: archive });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(statSync(archive).uid, MEMBER.uid, 'the archive belongs to the caller');
  assert.deepEqual(spawnSync('ls', ['-A', folder], { encoding: 'utf8' }).stdout.trim().split('\n').sort(), ['notes.txt', 'snap.tar']);

  // An archive the caller cannot read is not read for them.
  const hidden = join(mkdtempSync(join(dir, 'private-')), 'snap.tar');
  writeFileSync(hidden, readFileSync(archive));
  chmodSync(join(hidden, '..'), 0o700);
  const r = await request(MEMBER, 'POST', '/v1/snapshots/import', { file: hidden, name: 'stolen' });
  assert.equal(r.status, 403, JSON.stringify(r.body));
  assert.equal(fake.engine.snapshots.list().some((s) => s.name === 'stolen'), false);
});

test('root, calling through the same socket, keeps its own access', async () => {
  const guestDir = mkdtempSync(join(dir, 'guest-'));
  mkdirSync(join(guestDir, 'in'));
  const r = await request({ uid: 0, gid: 0 }, 'POST', `/v1/vms/${vmName}/files/copy-in`, { hostPath: '/etc/hostname', guestPath: join(guestDir, 'in', 'hostname') });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(readFileSync(join(guestDir, 'in', 'hostname'), 'utf8'), readFileSync('/etc/hostname', 'utf8'));
});
