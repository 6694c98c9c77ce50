import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { aptUpdateOnce } from './apt.js';
import { hostSearchPath, run } from './exec.js';
import { isStaticElf } from './elf.js';
import type { ProgressFn } from './types.js';

/** What cellvm needs on the host and the Debian package that provides it. */
export interface HostRequirement {
  /** What is checked, as the user would call it. */
  what: string;
  package: string;
  present: () => Promise<boolean>;
}

export const STATIC_BUSYBOX = '/bin/busybox';
export const STATIC_LIBC = '/usr/lib/x86_64-linux-gnu/libc.a';

export const HOST_REQUIREMENTS: readonly HostRequirement[] = [
  { what: 'qemu-system-x86_64', package: 'qemu-system-x86', present: () => hasCommand('qemu-system-x86_64') },
  { what: 'qemu-img', package: 'qemu-utils', present: () => hasCommand('qemu-img') },
  // debugfs comes with mke2fs; busybox-image.ts uses it when not running as root.
  { what: 'mke2fs', package: 'e2fsprogs', present: () => hasCommand('mke2fs') },
  // The built-in image's only binary: it must be static because the image has no libc.
  { what: `static ${STATIC_BUSYBOX}`, package: 'busybox-static', present: () => isStatic(STATIC_BUSYBOX) },
  { what: 'gcc', package: 'gcc', present: () => hasCommand('gcc') },
  // The agent is linked statically: it is PID 1 in an initramfs without a libc.
  { what: STATIC_LIBC, package: 'libc6-dev', present: () => exists(STATIC_LIBC) },
  // Image layers: zstd-compressed ones (Node 20's zlib has no zstd) and extended attributes
  // (file capabilities such as ping's cap_net_raw) on the unpacked tree.
  { what: 'zstd', package: 'zstd', present: () => hasCommand('zstd') },
  // The guest kernel's payload, unpacked once at set-up (kernel-image.ts): Debian's is LZ4.
  { what: 'lz4', package: 'lz4', present: () => hasCommand('lz4') },
  { what: 'xz', package: 'xz-utils', present: () => hasCommand('xz') },
  { what: 'setfattr', package: 'attr', present: () => hasCommand('setfattr') },
  { what: 'dpkg-deb', package: 'dpkg', present: () => hasCommand('dpkg-deb') },
  { what: 'apt-get', package: 'apt', present: () => hasCommand('apt-get') },
  // VMs' networking (docs/networking.md): namespaces, links and rules.
  { what: 'ip', package: 'iproute2', present: () => hasCommand('ip') },
  { what: 'nft', package: 'nftables', present: () => hasCommand('nft') },
  { what: 'nsenter', package: 'util-linux', present: () => hasCommand('nsenter') },
];

export async function missingRequirements(
  requirements: readonly HostRequirement[] = HOST_REQUIREMENTS,
): Promise<HostRequirement[]> {
  const present = await Promise.all(requirements.map((r) => r.present()));
  return requirements.filter((_, i) => !present[i]);
}

/**
 * Makes sure the host has every package in HOST_REQUIREMENTS. Checking is a few stat calls (no
 * dpkg, no apt), so the common case costs nothing. Installing needs root and `install`; otherwise
 * the error says exactly what to install.
 */
export async function ensureHostPackages(
  opts: { install?: boolean; onProgress?: ProgressFn; requirements?: readonly HostRequirement[] } = {},
): Promise<void> {
  const step = 'host packages';
  const missing = await missingRequirements(opts.requirements);
  if (missing.length === 0) {
    opts.onProgress?.({ step, status: 'cached', detail: 'all present' });
    return;
  }
  const packages = [...new Set(missing.map((m) => m.package))];
  const isRoot = process.getuid?.() === 0;
  const canInstall = opts.install !== false && isRoot && !missing.some((m) => m.package === 'apt');
  if (!canInstall) {
    throw new CellError(
      ErrorCodes.HOST_MISSING_DEPENDENCY,
      `missing host packages: ${packages.join(', ')} (run: sudo apt-get install ${packages.join(' ')})`,
      { missing: missing.map((m) => ({ what: m.what, package: m.package })) },
    );
  }
  opts.onProgress?.({ step, status: 'start', detail: `installing ${packages.join(' ')}` });
  await aptUpdateOnce();
  await run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...packages], {
    env: { DEBIAN_FRONTEND: 'noninteractive' },
  });
  const still = await missingRequirements(missing);
  if (still.length > 0) {
    throw new CellError(
      ErrorCodes.SETUP_FAILED,
      `installed ${packages.join(' ')} but still missing: ${still.map((m) => `${m.what} (${m.package})`).join(', ')}`,
    );
  }
  opts.onProgress?.({ step, status: 'done', detail: `installed ${packages.join(' ')}` });
}

/** Whether `name` is an executable in PATH (or an sbin dir), without spawning anything. */
export async function hasCommand(name: string): Promise<boolean> {
  for (const dir of hostSearchPath().split(':')) {
    try {
      await access(join(dir, name), constants.X_OK);
      return true;
    } catch {
      /* not in this dir */
    }
  }
  return false;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}

async function isStatic(path: string): Promise<boolean> {
  try {
    return await isStaticElf(path);
  } catch {
    return false;
  }
}
