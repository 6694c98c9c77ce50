import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import net from 'node:net';
import { once } from 'node:events';
import { TestHome } from '../helpers/cell-home.js';
import { Sandbox } from '../../src/sdk/sandbox.js';
import { CellError } from '../../src/domain/errors.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('cell cp: files between the host and a running VM', () => {
  let h: TestHome;
  let host: string;
  const big = randomBytes(5 * 1024 * 1024 + 3);

  before(async () => {
    h = new TestHome();
    host = mkdtempSync('/tmp/cellcp-');
    const app = join(host, 'app');
    mkdirSync(join(app, 'bin'), { recursive: true });
    mkdirSync(join(app, 'conf', 'empty'), { recursive: true });
    writeFileSync(join(app, 'README'), 'hello from the host\n');
    writeFileSync(join(app, 'bin', 'run.sh'), '#!/bin/sh\necho running $1\n');
    chmodSync(join(app, 'bin', 'run.sh'), 0o750);
    writeFileSync(join(app, 'conf', 'secret'), 'token=1\n');
    chmodSync(join(app, 'conf', 'secret'), 0o600);
    symlinkSync('bin/run.sh', join(app, 'start'));
    writeFileSync(join(host, 'big.bin'), big);
    await h.ok(['run', '-d', '--name', 'box', 'busybox']);
  });

  after(async () => {
    await h.cleanup();
    rmSync(host, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  test('a host directory goes in with its contents, modes and symlink', async () => {
    const r = await h.ok(['cp', join(host, 'app'), 'box:/opt/']);
    assert.equal(r.stdout, '');
    const cat = await h.ok(['exec', 'box', '--', 'cat', '/opt/app/README', '/opt/app/conf/secret']);
    assert.equal(cat.stdout, 'hello from the host\ntoken=1\n');
    const modes = await h.ok(['exec', 'box', '--', 'stat', '-c', '%n %a %u:%g %F', '/opt/app', '/opt/app/bin/run.sh', '/opt/app/conf/secret', '/opt/app/conf/empty']);
    assert.equal(
      modes.stdout,
      [
        '/opt/app 755 0:0 directory',
        '/opt/app/bin/run.sh 750 0:0 regular file',
        '/opt/app/conf/secret 600 0:0 regular file',
        '/opt/app/conf/empty 755 0:0 directory',
        '',
      ].join('\n'),
    );
    const ls = await h.ok(['exec', 'box', '--', 'ls', '-l', '/opt/app/bin/run.sh', '/opt/app/start']);
    assert.match(ls.stdout, /^-rwxr-x--- .* \/opt\/app\/bin\/run\.sh$/m);
    assert.match(ls.stdout, /^lrwxrwxrwx .* \/opt\/app\/start -> bin\/run\.sh$/m);
    const run = await h.ok(['exec', 'box', '--', '/opt/app/start', 'ok']);
    assert.equal(run.stdout, 'running ok\n');
  });

  test('the contents of a directory (SRC/.) and a single file to a new name', async () => {
    await h.ok(['cp', `${join(host, 'app')}/.`, 'box:/srv/site']);
    await h.ok(['cp', join(host, 'app', 'README'), 'box:/etc/motd']);
    const r = await h.ok(['exec', 'box', '--', 'sh', '-c', 'ls /srv/site; cat /etc/motd']);
    assert.equal(r.stdout, 'README\nbin\nconf\nstart\nhello from the host\n');
  });

  test('a 5 MiB file goes in and comes back out unchanged', async () => {
    await h.ok(['cp', join(host, 'big.bin'), 'box:/root/']);
    const inside = await h.ok(['exec', 'box', '--', 'sha256sum', '/root/big.bin']);
    assert.equal(inside.stdout.split(' ')[0], sha256(big));
    await h.ok(['cp', 'box:/root/big.bin', join(host, 'big.back')]);
    assert.equal(sha256(readFileSync(join(host, 'big.back'))), sha256(big));
  });

  test('a file and a directory come out; a copy into an existing directory lands inside it', async () => {
    await h.ok(['exec', 'box', '--', 'sh', '-c', 'mkdir -p /data/sub && echo one > /data/one && echo two > /data/sub/two && chmod 640 /data/one && ln -s sub/two /data/link']);
    const out = join(host, 'out');
    mkdirSync(out);
    await h.ok(['cp', 'box:/etc/hostname', join(out, 'hostname.txt')]);
    assert.equal(readFileSync(join(out, 'hostname.txt'), 'utf8'), 'box\n');
    await h.ok(['cp', 'box:/data', out]);
    assert.deepEqual(readdirSync(join(out, 'data')).sort(), ['link', 'one', 'sub']);
    assert.equal(readFileSync(join(out, 'data', 'sub', 'two'), 'utf8'), 'two\n');
    assert.equal(statSync(join(out, 'data', 'one')).mode & 0o777, 0o640);
    assert.equal(readlinkSync(join(out, 'data', 'link')), 'sub/two');
    assert.ok(lstatSync(join(out, 'data', 'link')).isSymbolicLink());
    // The same again is refused: a directory copy never merges into what is on the host.
    const again = await h.cell(['cp', 'box:/data', out]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /^error: .*data already exists/);
    assert.deepEqual(readdirSync(out).sort(), ['data', 'hostname.txt'], 'no temporary directory left');
  });

  const failures: [string, () => string[], RegExp][] = [
    ['no such VM', () => ['cp', join(host, 'app'), 'ghost:/tmp'], /no such VM: ghost/],
    ['a missing guest path', () => ['cp', 'box:/no/such/file', join(host, 'x')], /\/no\/such\/file: No such file or directory/],
    ['a missing host path', () => ['cp', join(host, 'nope'), 'box:/tmp'], /nope \(host\): no such file or directory/],
    ['two host paths', () => ['cp', join(host, 'app'), join(host, 'copy')], /one of SRC and DEST must be in a VM/],
    ['two VM paths', () => ['cp', 'box:/etc', 'box:/tmp'], /from one VM to another is not supported/],
  ];
  for (const [what, args, message] of failures) {
    test(`${what}: one clear error line, a non-zero exit`, async () => {
      const r = await h.cell(args());
      assert.notEqual(r.code, 0, `exit code for ${what}`);
      assert.match(r.stderr, message);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.ok(!readdirSync(host).includes('x') && !readdirSync(host).includes('copy'), 'nothing was created');
    });
  }

  test('a socket in a host tree is refused before anything is copied', async () => {
    const dir = join(host, 'with-socket');
    mkdirSync(dir);
    writeFileSync(join(dir, 'a-file'), 'x');
    const server = net.createServer().listen(join(dir, 'zz.sock'));
    await once(server, 'listening');
    try {
      const r = await h.cell(['cp', dir, 'box:/tmp/sock-copy']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /^error: cannot copy .*zz\.sock: it is a socket/);
      const ls = await h.cell(['exec', 'box', '--', 'ls', '/tmp/sock-copy']);
      assert.notEqual(ls.code, 0, 'nothing was copied');
    } finally {
      server.close();
    }
  });

  test('a VM that is not running', async () => {
    await h.ok(['run', '--name', 'idle', 'busybox', '--', 'true']);
    for (const args of [['cp', join(host, 'app'), 'idle:/tmp'], ['cp', 'idle:/etc/hostname', join(host, 'x')]]) {
      const r = await h.cell(args);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /^error: VM idle is not running \(state: stopped\)$/m);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    }
    await h.ok(['rm', 'idle']);
  });

  test('SDK: box.files.write, read, stat, exists, list, mkdir, remove, upload and download', async () => {
    const box = await Sandbox.connect('box', { connect: { home: h.home, autoStart: false } });
    try {
      await box.files.write('/work/notes.txt', 'written by the SDK\n');
      assert.equal((await box.files.read('/work/notes.txt')).toString(), 'written by the SDK\n');
      assert.equal((await box.commands.run('cat /work/notes.txt')).stdout, 'written by the SDK\n');
      await box.files.write('/work/tool.sh', '#!/bin/sh\necho tool\n', { mode: 0o755 });
      assert.equal((await box.commands.run('/work/tool.sh')).stdout, 'tool\n');
      const st = await box.files.stat('/work/tool.sh');
      assert.deepEqual([st.kind, st.mode, st.size], ['file', 0o755, 20]);

      // A streamed write, in uneven pieces, comes back byte for byte.
      async function* pieces() {
        for (let off = 0; off < big.length; off += 100_003) yield big.subarray(off, off + 100_003);
      }
      await box.files.write('/work/big.bin', pieces());
      assert.equal(sha256(await box.files.read('/work/big.bin')), sha256(big));

      const up = await box.files.upload(join(host, 'app'), '/work/');
      assert.equal(up.target, '/work/app');
      assert.deepEqual([up.files, up.directories, up.symlinks], [3, 4, 1]);
      const down = await box.files.download('/work/app', join(host, 'downloaded'));
      assert.equal(readFileSync(join(down.target, 'README'), 'utf8'), 'hello from the host\n');

      // mkdir, list and remove run mkdir, find and rm in the guest with the path as one argument: no shell.
      await box.files.mkdir('/work/a dir/$(touch pwned); x');
      assert.equal(await box.files.exists('/work/a dir/$(touch pwned); x'), true);
      await box.files.write('/work/a dir/file', 'abc');
      const entries = (await box.files.list('/work/a dir')).map((e) => [e.name, e.path, e.kind]).sort();
      assert.deepEqual(entries, [
        ['$(touch pwned); x', '/work/a dir/$(touch pwned); x', 'directory'],
        ['file', '/work/a dir/file', 'file'],
      ]);
      await box.files.remove('/work/a dir');
      assert.equal(await box.files.exists('/work/a dir'), false);
      // A file name cannot hold '/'; a shell would have run touch in the working directory.
      assert.equal(await box.files.exists('/pwned'), false);
      assert.equal(await box.files.exists('/work/pwned'), false);
      await box.files.remove('/work/never-there'); // a missing path is fine

      const code = async (p: Promise<unknown>) => p.then(() => 'ok', (e: unknown) => (e instanceof CellError ? e.code : String(e)));
      assert.equal(await code(box.files.read('/work/missing')), 'not_found');
      assert.equal(await code(box.files.read('/work')), 'invalid_argument');
      assert.equal(await code(box.files.read('/work/big.bin', { maxBytes: 1000 })), 'size_limit');
      assert.equal(await code(box.files.write('/work/notes.txt/below', 'x')), 'invalid_argument');
      assert.equal(await code(box.files.write('relative', 'x')), 'invalid_argument');
      assert.equal(await code(box.files.stat('/nope')), 'not_found');
      assert.equal(await code(box.files.list('/nope')), 'not_found');
      assert.equal(await code(box.files.list('/work/notes.txt')), 'invalid_argument');
    } finally {
      box.client.close();
    }
  });

  test('cp --help explains the operands with examples', async () => {
    const r = await h.ok(['cp', '--help']);
    assert.match(r.stdout, /VM:PATH/);
    assert.match(r.stdout, /Examples:\n {2}cell cp/);
  });
});
