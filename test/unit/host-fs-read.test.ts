/**
 * HostFs.readFile (build and template files a caller names) runs synchronously on celld's main
 * thread: a FIFO must not hang it, a device must not fill its memory, a plain file reads whole.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CELLD_HOST_FS } from '../../src/engine/host-fs.js';

test('readFile: a plain file whole; a FIFO or a device refused at once', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hostfs-'));
  try {
    writeFileSync(join(dir, 'build.toml'), 'image = "x"\n');
    assert.equal((await CELLD_HOST_FS.readFile(join(dir, 'build.toml'))).toString(), 'image = "x"\n');
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    await assert.rejects(CELLD_HOST_FS.readFile(join(dir, 'fifo')), /not a regular file/);
    await assert.rejects(CELLD_HOST_FS.readFile('/dev/zero'), /not a regular file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
