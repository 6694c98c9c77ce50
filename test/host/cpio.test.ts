import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CpioWriter } from '../../src/host/cpio.js';

/**
 * Our cpio writer against GNU cpio: the archive lists and extracts with the real tool, with the
 * same content, modes, link targets and device numbers. GNU cpio is installed from Debian's
 * archive when missing (root only; skipped otherwise).
 */
function ensureCpioTool(): string | null {
  if (spawnSync('sh', ['-c', 'command -v cpio']).status === 0) return null;
  if (process.getuid?.() !== 0) return 'cpio is not installed and we are not root to install it';
  const install = () =>
    spawnSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'cpio'], {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    }).status === 0;
  if (install()) return null;
  spawnSync('apt-get', ['update', '-q']);
  return install() ? null : 'apt-get install cpio failed';
}

function sample(): CpioWriter {
  return new CpioWriter()
    .dir('dev')
    .charDevice('dev/console', 5, 1, 0o600)
    .dir('proc', 0o555)
    .dir('tmp', 0o1777)
    .file('init', Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]), 0o755)
    .file('empty', '', 0o644)
    .file('one', 'a', 0o600)
    .file('four', 'abcd', 0o640)
    .file('five', 'abcde', 0o644)
    // parents etc/ and etc/cell/ are added by the writer
    .file('etc/cell/modules', '/lib/modules/virtio.ko\n/lib/modules/virtio_ring.ko\n')
    .file('lib/modules/big.ko', Buffer.alloc(70_001, 0xab))
    .symlink('bin/sh', '/bin/busybox')
    .symlink('lib64', 'lib');
}

describe('CpioWriter (newc)', () => {
  let skip: string | null = null;
  let dir = '';
  before(() => {
    skip = ensureCpioTool();
    dir = mkdtempSync('/tmp/cell-cpio-test-');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the same bytes for the same entries', () => {
    assert.ok(sample().toBuffer().equals(sample().toBuffer()));
    const buf = sample().toBuffer();
    assert.equal(buf.length % 4, 0);
    assert.equal(buf.subarray(0, 6).toString(), '070701');
    assert.ok(buf.includes(Buffer.from('TRAILER!!!\0')));
  });

  it('rejects duplicate and escaping names', () => {
    assert.throws(() => new CpioWriter().file('a', 'x').file('/a', 'y'), /duplicate/);
    assert.throws(() => new CpioWriter().file('../etc/passwd', 'x'), /bad entry name/);
  });

  it('lists with cpio -it', (t) => {
    if (skip) return t.skip(skip);
    const archive = join(dir, 'list.cpio');
    writeFileSync(archive, sample().toBuffer());
    const listed = execFileSync('cpio', ['-it', '--quiet', '-F', archive], { encoding: 'utf8' }).split('\n').filter(Boolean);
    assert.deepEqual(listed, [
      'dev', 'dev/console', 'proc', 'tmp', 'init', 'empty', 'one', 'four', 'five', 'etc', 'etc/cell',
      'etc/cell/modules', 'lib', 'lib/modules', 'lib/modules/big.ko', 'bin', 'bin/sh', 'lib64',
    ]);
  });

  it('extracts identical content and modes with cpio -idv', (t) => {
    if (skip) return t.skip(skip);
    const archive = join(dir, 'x.cpio');
    const out = join(dir, 'out');
    writeFileSync(archive, sample().toBuffer());
    execFileSync('mkdir', ['-p', out]);
    // Device nodes need root to create; as non-root leave the node out of the comparison.
    const isRoot = process.getuid?.() === 0;
    execFileSync('cpio', ['-idv', '--quiet', '--no-absolute-filenames', '--no-preserve-owner', '-F', archive], { cwd: out, stdio: 'pipe' });
    const mode = (p: string) => lstatSync(join(out, p)).mode & 0o7777;
    const data = (p: string) => readFileSync(join(out, p));

    assert.deepEqual(data('init'), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]));
    assert.equal(mode('init'), 0o755);
    assert.equal(data('empty').length, 0);
    assert.equal(data('one').toString(), 'a');
    assert.equal(mode('one'), 0o600);
    assert.equal(data('four').toString(), 'abcd');
    assert.equal(mode('four'), 0o640);
    assert.equal(data('five').toString(), 'abcde');
    assert.equal(data('etc/cell/modules').toString(), '/lib/modules/virtio.ko\n/lib/modules/virtio_ring.ko\n');
    assert.deepEqual(data('lib/modules/big.ko'), Buffer.alloc(70_001, 0xab));
    assert.ok(lstatSync(join(out, 'etc/cell')).isDirectory());
    assert.equal(mode('etc/cell'), 0o755);
    assert.equal(mode('proc'), 0o555);
    assert.equal(mode('tmp'), 0o1777);
    assert.equal(readlinkSync(join(out, 'bin/sh')), '/bin/busybox');
    assert.equal(readlinkSync(join(out, 'lib64')), 'lib');
    if (isRoot) {
      const console = lstatSync(join(out, 'dev/console'));
      assert.ok(console.isCharacterDevice());
      assert.equal(console.rdev, (5 << 8) | 1);
      assert.equal(console.mode & 0o7777, 0o600);
    }
  });
});
