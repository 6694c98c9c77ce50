/**
 * Who may use celld: its socket is 0660 with group `cell` (CELL_SOCKET_GROUP here, as no `cell`
 * group exists on test hosts) and the home lets that group through to the socket and nowhere else;
 * with no such group both are celld's user's alone. A real celld is started (no VM is booted).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, waitFor } from '../helpers/cell-home.js';

const NOGROUP = 65534;
const homes: string[] = [];
after(() => {
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

const mode = (path: string) => (lstatSync(path).mode & 0o7777).toString(8);

/** Starts celld on a fresh home, runs `check` while it serves, then stops it. */
async function withCelld(env: NodeJS.ProcessEnv, check: (home: string) => void | Promise<void>): Promise<void> {
  const home = mkdtempSync('/tmp/cella-');
  homes.push(home);
  const celld = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'src/server/main.ts')], {
    env: { ...process.env, CELL_HOME: home, CELL_CACHE: join(home, 'cache'), CELL_MEMORY_DIR: join(home, 'memory'), CELL_SPARES: '0', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  celld.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise((resolve) => celld.once('exit', resolve));
  try {
    const up = await waitFor(() => existsSync(join(home, 'celld.sock')) && readdirSync(home).includes('celld.pid'), 15_000);
    assert.ok(up, `celld did not come up: ${stderr}`);
    await new Promise((r) => setTimeout(r, 200)); // the socket's mode is set right after it binds
    await check(home);
  } finally {
    celld.kill('SIGTERM');
    await exited;
  }
}

/** Whether a process of `uid`:`gid` (no other groups) can connect to the socket. */
function canConnect(socket: string, uid: number, gid: number): string {
  const script = `require('net').connect(${JSON.stringify(socket)}).on('connect', () => { console.log('connected'); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(0); });`;
  const r = spawnSync(process.execPath, ['-e', script], { uid, gid, encoding: 'utf8', cwd: '/' });
  return r.stdout.trim();
}

test("with the socket's group: the socket is 0660 in that group, the home 0710 in it, so members reach celld and others do not", async () => {
  await withCelld({ CELL_SOCKET_GROUP: 'nogroup' }, (home) => {
    const socket = join(home, 'celld.sock');
    assert.equal(mode(socket), '660');
    assert.equal(lstatSync(socket).gid, NOGROUP);
    assert.equal(mode(home), '710');
    assert.equal(lstatSync(home).gid, NOGROUP);
    for (const file of ['cell.db', 'celld.log', 'celld.pid']) assert.equal(mode(join(home, file)), '600', file);
    for (const dir of ['vms', 'snapshots', 'memory']) assert.equal(mode(join(home, dir)), '700', dir);
    assert.equal(canConnect(socket, 65533, NOGROUP), 'connected', 'a member of the group');
    assert.equal(canConnect(socket, 65533, 65533), 'EACCES', 'anyone else');
  });
});

test('without the group: the socket is 0600 and the home 0700, celld\'s user alone', async () => {
  await withCelld({ CELL_SOCKET_GROUP: 'cell-no-such-group' }, (home) => {
    const socket = join(home, 'celld.sock');
    assert.equal(mode(socket), '600');
    assert.equal(mode(home), '700');
    assert.equal(canConnect(socket, 65533, NOGROUP), 'EACCES');
  });
});
