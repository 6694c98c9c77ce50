import { chmod, copyFile, lutimes, mkdir, open, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { ImageConfig } from '../domain/image.js';
import { run } from './exec.js';
import { fsyncPath, isFile, makeWorkDir, publishFile, readJsonIfExists, sha256File, sha256Hex, writeFileAtomic } from './files.js';
import { STATIC_BUSYBOX } from './packages.js';
import type { BuiltinImage, ProgressFn } from './types.js';

/**
 * The built-in `busybox` image: an ext4 disk holding the host's static busybox with one symlink
 * per applet and a minimal /etc. Stored as `<cache>/images/busybox/<key>.ext4` plus `<key>.json`
 * (the image record, written after the disk as its completion marker); key = sha256 of the busybox
 * binary and the layout version. The record's digest is the sha256 of the disk file itself.
 */
const STEP = 'image busybox';
/** Bump when the staging tree or the mke2fs options change. */
const IMAGE_LAYOUT = 2;
const REFERENCE = 'busybox';
const MIB = 1024 * 1024;
/**
 * Free space on top of the content. The base is shared read-only and each VM writes to a qcow2
 * overlay, so this free space is every VM's writable room; the file is sparse, so growing this
 * costs little disk (only the apparent size), but 64 MiB is plenty for a busybox sandbox.
 */
const HEADROOM_MIB = 64;

const CONFIG: ImageConfig = {
  Cmd: ['sh'],
  Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  WorkingDir: '/',
};

interface ImageRecordFile extends BuiltinImage {
  key: string;
}

/** The busybox binary's sha256, remembered by inode/size/ctime so the fast path reads 1 stat, not 2 MB. */
interface SourceMemo {
  ino: number;
  size: number;
  ctimeMs: number;
  mtimeMs: number;
  sha256: string;
}

export async function ensureBusyboxImage(opts: {
  cacheDir: string;
  busybox?: string;
  onProgress?: ProgressFn;
}): Promise<BuiltinImage> {
  const busybox = opts.busybox ?? STATIC_BUSYBOX;
  const dir = join(opts.cacheDir, 'images', REFERENCE);
  const busyboxSha = await memoizedSha256(busybox, join(dir, 'source.json'));
  const key = sha256Hex(`busybox-image layout ${IMAGE_LAYOUT}\0${busyboxSha}`);
  const diskPath = join(dir, `${key}.ext4`);
  const recordPath = join(dir, `${key}.json`);

  const existing = await readJsonIfExists<ImageRecordFile>(recordPath);
  if (existing?.key === key && (await isFile(diskPath))) {
    opts.onProgress?.({ step: STEP, status: 'cached', detail: `${existing.digest.slice(0, 19)} (${existing.sizeBytes} bytes)` });
    return toImage(existing, diskPath);
  }

  opts.onProgress?.({ step: STEP, status: 'start' });
  const work = await makeWorkDir(opts.cacheDir, 'image-busybox');
  try {
    const root = join(work, 'root');
    const contentBytes = await stageRoot(root, busybox);
    const sizeMib = Math.ceil((contentBytes * 1.5) / MIB) + HEADROOM_MIB;
    const disk = join(work, 'disk.ext4');
    await makeExt4(disk, root, sizeMib, key);
    await fsyncPath(disk);
    const record: ImageRecordFile = {
      key,
      reference: REFERENCE,
      digest: `sha256:${await sha256File(disk)}`,
      diskPath,
      sizeBytes: (await stat(disk)).size,
      config: CONFIG,
    };
    // Read-only: every VM's overlay uses it as its backing file.
    await publishFile(disk, diskPath, 0o444);
    await writeFileAtomic(recordPath, JSON.stringify(record, null, 2));
    opts.onProgress?.({ step: STEP, status: 'done', detail: `${record.digest.slice(0, 19)} (${sizeMib} MiB)` });
    return toImage(record, diskPath);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** diskPath comes from where the record was found, so a moved cache dir still works. */
function toImage(r: ImageRecordFile, diskPath: string): BuiltinImage {
  return { reference: r.reference, digest: r.digest, diskPath, sizeBytes: r.sizeBytes, config: r.config };
}

/** Directories of the image and their modes (set explicitly: the umask must not leak into the image). */
const DIRS: readonly [string, number][] = [
  ['bin', 0o755], ['sbin', 0o755], ['usr', 0o755], ['usr/bin', 0o755], ['usr/sbin', 0o755],
  ['etc', 0o755], ['proc', 0o555], ['sys', 0o555], ['dev', 0o755], ['run', 0o755], ['home', 0o755],
  ['root', 0o700], ['tmp', 0o1777], ['var', 0o755], ['var/tmp', 0o1777],
];

const ETC_FILES: readonly [string, number, string][] = [
  ['passwd', 0o644, 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'],
  ['group', 0o644, 'root:x:0:\nnogroup:x:65534:\n'],
  ['shadow', 0o600, 'root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n'],
  // The agent sets the running hostname from the kernel command line; this is only the default.
  ['hostname', 0o644, 'cell\n'],
  ['hosts', 0o644, '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'],
  ['os-release', 0o644, 'NAME="cellvm busybox"\nID=busybox\nPRETTY_NAME="cellvm busybox"\n'],
];

/** Builds the image's tree in `root`; returns the bytes of content (for sizing). */
async function stageRoot(root: string, busybox: string): Promise<number> {
  await mkdir(root);
  await chmod(root, 0o755);
  for (const [dir, mode] of DIRS) {
    await mkdir(join(root, dir));
    await chmod(join(root, dir), mode);
  }
  await copyFile(busybox, join(root, 'bin', 'busybox'));
  await chmod(join(root, 'bin', 'busybox'), 0o755);
  const applets = (await run(busybox, ['--list-full'])).stdout.split('\n').map((l) => l.trim());
  for (const applet of applets) {
    // linuxrc is the initrd-era init; bin/busybox is the binary itself. Applets live in the four
    // bin dirs made above.
    if (!applet || applet === 'linuxrc' || applet === 'bin/busybox' || applet.includes('..')) continue;
    await symlink('/bin/busybox', join(root, applet));
  }
  for (const [name, mode, text] of ETC_FILES) {
    await writeFile(join(root, 'etc', name), text);
    await chmod(join(root, 'etc', name), mode);
  }
  return normalizeTimes(root);
}

/** Sets every timestamp in the tree to 0 (so the disk is reproducible) and sums the file sizes. */
async function normalizeTimes(root: string): Promise<number> {
  let bytes = 0;
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    const path = join(entry.parentPath, entry.name);
    if (entry.isFile()) bytes += (await stat(path)).size;
    await lutimes(path, 0, 0);
  }
  await lutimes(root, 0, 0);
  return bytes;
}

/**
 * mke2fs -d copies the tree into a new ext4 file system. Choices: 4 KiB blocks (mke2fs would pick
 * 1 KiB for a file system this small); the default journal kept, because VMs write to the file
 * system (through their overlay) and a killed VM restarted on the same overlay must not need fsck;
 * inode tables and journal zeroed now (lazy_*_init=0) so the guest kernel's ext4lazyinit thread
 * has nothing to write on every boot; no reserved blocks (the guest user is root anyway); UUID,
 * hash seed and times fixed so the same tree gives the same bytes.
 */
async function makeExt4(disk: string, root: string, sizeMib: number, key: string): Promise<void> {
  const uuid = [key.slice(0, 8), key.slice(8, 12), `4${key.slice(13, 16)}`, `8${key.slice(17, 20)}`, key.slice(20, 32)].join('-');
  const fh = await open(disk, 'wx', 0o644);
  await fh.truncate(sizeMib * MIB);
  await fh.close();
  await run(
    'mke2fs',
    [
      '-q', '-F', '-t', 'ext4', '-b', '4096', '-i', '8192', '-m', '0', '-L', 'cellroot', '-U', uuid,
      '-E', `root_owner=0:0,hash_seed=${uuid},lazy_itable_init=0,lazy_journal_init=0`,
      '-d', root, disk,
    ],
    { env: { E2FSPROGS_FAKE_TIME: '1' } },
  );
  await fixInodes(disk, root, process.getuid?.() !== 0);
}

/**
 * One debugfs batch over every inode: mke2fs -d copies each staging file's ctime, which no
 * syscall can set, so ctime is zeroed here (the image is then byte-for-byte reproducible); and it
 * keeps the staging files' owners, so a non-root set-up (which staged them as itself) also sets
 * 0:0. debugfs looks paths up without following the final symlink, so links themselves change.
 */
async function fixInodes(disk: string, root: string, chownToRoot: boolean): Promise<void> {
  const paths = ['/'];
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    paths.push(join(entry.parentPath, entry.name).slice(root.length));
  }
  const commands = paths.flatMap((p) => [
    `sif "${p}" ctime @0`,
    ...(chownToRoot ? [`sif "${p}" uid 0`, `sif "${p}" gid 0`] : []),
  ]);
  const { stderr } = await run('debugfs', ['-w', '-f', '-', disk], {
    input: `${commands.join('\n')}\n`,
    env: { E2FSPROGS_FAKE_TIME: '1' },
  });
  // debugfs exits 0 even when a command fails; anything but its version banner is an error.
  const problems = stderr.split('\n').filter((l) => l.trim() && !l.startsWith('debugfs '));
  if (problems.length > 0) {
    throw new CellError(ErrorCodes.SETUP_FAILED, `debugfs could not fix up ${disk}: ${problems.slice(0, 5).join('; ')}`);
  }
}

async function memoizedSha256(path: string, memoPath: string): Promise<string> {
  const s = await stat(path);
  const memo = await readJsonIfExists<SourceMemo>(memoPath);
  if (memo && memo.ino === s.ino && memo.size === s.size && memo.ctimeMs === s.ctimeMs && memo.mtimeMs === s.mtimeMs) {
    return memo.sha256;
  }
  const sha256 = await sha256File(path);
  const fresh: SourceMemo = { ino: s.ino, size: s.size, ctimeMs: s.ctimeMs, mtimeMs: s.mtimeMs, sha256 };
  await writeFileAtomic(memoPath, JSON.stringify(fresh));
  return sha256;
}
