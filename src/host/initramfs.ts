import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { AgentBinary } from './agent-build.js';
import { CpioWriter } from './cpio.js';
import { isFile, makeWorkDir, publishFile, readJsonIfExists, sha256Hex, writeFileAtomic, writeFileSynced } from './files.js';
import type { GuestKernel } from './kernel.js';
import type { ProgressFn } from './types.js';

/**
 * The initramfs: the agent as /init, the kernel modules it loads (listed in /etc/cell/modules in
 * load order, as docs/protocol.md "Start-up" describes), the mount points it uses before switching
 * to the root disk, and /dev/console (the kernel opens it for PID 1's stdio before anything is
 * mounted). Stored as `<cache>/initramfs/<key>.cpio.gz` with `<key>.json` (digest, size) written after
 * it as the completion marker; key = sha256 over the agent's digest, the modules (names, files,
 * digests, order), the layout version and the compression.
 */
const STEP = 'initramfs';
/** Bump when the initramfs contents or layout change. */
const INITRAMFS_LAYOUT = 2; // 2: the share modules' own list
export const GUEST_MODULE_DIR = '/lib/modules';
export const GUEST_MODULE_LIST = '/etc/cell/modules';
/** The modules a VM with host folders loads as well (the agent reads it only then). */
export const SHARE_MODULE_LIST = '/etc/cell/modules.share';

/**
 * Measured, and a tie. Uncompressed spares the guest the inflate under TCG (dmesg: unpacking takes
 * 35 ms instead of 83 ms) but has QEMU load a 2.8x larger -initrd (1.78 MB vs 0.64 MB); end to end
 * the two cancel out. Real agent, TCG, 2-core host shared with other work, boots in alternating
 * order (back-to-back boots in a fixed order favoured whichever went second by 100-250 ms, which
 * first looked like a win for either side), medians:
 *   QEMU spawn to first PONG, 20 pairs:   gzip 1975 ms (q1 1830) | none 1940 ms (q1 1833)
 *   spawn to root mounted, 21 pairs:      gzip 1870 ms, QEMU CPU 1820 ms | none 1880 ms, CPU 1870 ms
 *   xz (0.43 MB) was ~300 ms slower (inflating dominates); zstd -19 (0.47 MB) no better than gzip.
 * gzip is kept: no slower, no more QEMU CPU, a third of the cache space, and only node:zlib.
 */
export const INITRAMFS_COMPRESSION: 'none' | 'gzip' = 'gzip';

export interface Initramfs {
  path: string;
  /** "sha256:<hex>" of the file. */
  digest: string;
  sizeBytes: number;
}

interface InitramfsMarker {
  key: string;
  sha256: string;
  size: number;
}

export async function ensureInitramfs(opts: {
  cacheDir: string;
  agent: AgentBinary;
  kernel: GuestKernel;
  compression?: 'none' | 'gzip';
  onProgress?: ProgressFn;
}): Promise<Initramfs> {
  const compression = opts.compression ?? INITRAMFS_COMPRESSION;
  const modules = opts.kernel.manifest.modules;
  const key = sha256Hex(
    JSON.stringify({
      layout: INITRAMFS_LAYOUT,
      compression,
      agent: opts.agent.digest,
      modules: modules.map((m) => [m.name, m.file, m.sha256, m.group]),
    }),
  );
  const dir = join(opts.cacheDir, 'initramfs');
  const path = join(dir, `${key}.cpio${compression === 'gzip' ? '.gz' : ''}`);
  const markerPath = join(dir, `${key}.json`);

  const marker = await readJsonIfExists<InitramfsMarker>(markerPath);
  if (marker?.key === key && (await isFile(path))) {
    opts.onProgress?.({ step: STEP, status: 'cached', detail: `${key.slice(0, 12)} (${marker.size} bytes)` });
    return { path, digest: `sha256:${marker.sha256}`, sizeBytes: marker.size };
  }

  opts.onProgress?.({ step: STEP, status: 'start' });
  const cpio = new CpioWriter()
    .dir('dev')
    .charDevice('dev/console', 5, 1, 0o600)
    .dir('proc')
    .dir('sys')
    .dir('newroot')
    .dir('etc')
    .dir('etc/cell')
    .dir('lib')
    .dir('lib/modules')
    .file('init', await readFile(opts.agent.path), 0o755)
    .file(GUEST_MODULE_LIST, moduleList(modules, 'boot'), 0o644)
    .file(SHARE_MODULE_LIST, moduleList(modules, 'share'), 0o644);
  for (const m of modules) {
    cpio.file(guestModulePath(m.file), await readFile(join(opts.kernel.dir, m.file)), 0o644);
  }
  const raw = cpio.toBuffer();
  const bytes = compression === 'gzip' ? gzipSync(raw, { level: 9 }) : raw;

  const work = await makeWorkDir(opts.cacheDir, 'initramfs');
  try {
    const tmp = join(work, 'initramfs');
    await writeFileSynced(tmp, bytes);
    await publishFile(tmp, path);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const built: InitramfsMarker = { key, sha256: sha256Hex(bytes), size: bytes.length };
  await writeFileAtomic(markerPath, JSON.stringify(built, null, 2));
  opts.onProgress?.({ step: STEP, status: 'done', detail: `${key.slice(0, 12)} (${bytes.length} bytes, ${compression})` });
  return { path, digest: `sha256:${built.sha256}`, sizeBytes: built.size };
}

function moduleList(modules: GuestKernel['manifest']['modules'], group: 'boot' | 'share'): string {
  return modules.filter((m) => m.group === group).map((m) => `${guestModulePath(m.file)}\n`).join('');
}

function guestModulePath(file: string): string {
  return `${GUEST_MODULE_DIR}/${file.split('/').pop()}`;
}
