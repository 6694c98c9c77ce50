import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A real XFS file system with reflinks, on a loop device over a sparse file in /tmp, for tests of
 * snapshots sharing their parents' pages (this host's ext4 has no reflinks). Needs root and
 * xfsprogs (scripts/test-deps.sh). `dispose` unmounts it and removes everything, also after a failure.
 */
export interface ReflinkFs {
  /** The mounted file system's root. */
  dir: string;
  dispose(): void;
}

export function mountReflinkFs(sizeMib = 4096): ReflinkFs {
  if (!existsSync('/usr/sbin/mkfs.xfs') && !existsSync('/sbin/mkfs.xfs')) throw new Error('mkfs.xfs is missing: run scripts/test-deps.sh (apt-get install xfsprogs)');
  // Short: celld's sockets live under a home made inside it, and sun_path is 108 bytes.
  const root = mkdtempSync('/tmp/cellt-x');
  const image = join(root, 'fs.img');
  const dir = join(root, 'm');
  mkdirSync(dir);
  try {
    execFileSync('truncate', ['-s', `${sizeMib}M`, image]);
    execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', image]);
    // -o loop: mount sets the loop device up and frees it at umount (autoclear).
    execFileSync('mount', ['-o', 'loop', image, dir]);
  } catch (err) {
    rmSync(root, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    dispose() {
      // Lazy as a last resort: a process of the test still inside must not leave a busy mount behind.
      if (spawnSync('umount', [dir]).status !== 0) spawnSync('umount', ['-l', dir]);
      rmSync(root, { recursive: true, force: true });
    },
  };
}
