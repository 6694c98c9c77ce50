import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { readModinfo } from './elf.js';
import { runRaw } from './exec.js';

/**
 * The modules the guest loads from its initramfs, by module name. Everything else the agent
 * needs (ext4, devtmpfs, the serial console) is built into Debian's cloud kernel. Dependencies are
 * found from each module's own `depends=` and need not be listed; built-in ones (rng-core in
 * this kernel) are skipped.
 */
export const GUEST_MODULES: readonly string[] = [
  'virtio_ring',
  'virtio',
  'virtio_mmio', // the transport of every device on -M microvm
  'virtio_blk', // root disk /dev/vda
  'virtio_console', // the agent's virtio-serial port
  'virtio_rng', // host entropy (virtio-rng-device)
  'failover',
  'net_failover',
  'virtio_net',
  'overlay',
];

/**
 * Modules loaded only by a VM that shares host folders (virtio-fs, docs/volumes.md): the agent
 * loads them when its command line names a share, so other boots do not pay for them.
 */
export const SHARE_MODULES: readonly string[] = ['virtiofs'];

/** Which list a module is loaded from: at every boot, or for host folders only. */
export type ModuleGroup = 'boot' | 'share';

export interface GuestModule {
  /** Module name as the kernel knows it (underscores), e.g. virtio_rng. */
  name: string;
  /** File name in the initramfs, e.g. virtio-rng.ko (always uncompressed). */
  file: string;
  /** Uncompressed module bytes. */
  data: Buffer;
}

const MODULE_SUFFIX = /\.ko(\.xz|\.zst|\.gz)?$/;

function moduleName(fileOrPath: string): string {
  return basename(fileOrPath).replace(MODULE_SUFFIX, '').replace(/-/g, '_');
}

/**
 * Resolves `wanted` in an extracted kernel tree (`<root>/lib/modules/<release>`) into the modules
 * to load, dependencies before dependents (depth-first, in the order asked). Compressed modules
 * (.ko.xz/.ko.zst/.ko.gz, which newer Debian kernels ship) are decompressed here so the agent can
 * hand plain bytes to init_module without the kernel needing in-kernel decompression; Debian 12's
 * cloud kernel ships plain .ko files, so this path is only a safety net.
 */
export async function resolveGuestModules(
  modulesDir: string,
  release: string,
  wanted: readonly string[] = GUEST_MODULES,
  /** Modules resolved already (another group's, loaded before these): not repeated. */
  loaded: readonly string[] = [],
): Promise<GuestModule[]> {
  const index = await indexModules(join(modulesDir, 'kernel'));
  const builtin = await readBuiltin(modulesDir);
  const ordered: GuestModule[] = [];
  const done = new Set<string>(loaded);
  const visiting = new Set<string>();

  const visit = async (rawName: string, neededBy: string | null): Promise<void> => {
    const name = rawName.replace(/-/g, '_');
    if (done.has(name) || builtin.has(name)) return;
    if (visiting.has(name)) throw setupError(`kernel modules ${[...visiting].join(' -> ')} -> ${name} form a cycle`);
    const path = index.get(name);
    if (!path) {
      throw setupError(
        `kernel ${release} has no module ${name}${neededBy ? ` (needed by ${neededBy})` : ''}, and it is not built in`,
      );
    }
    visiting.add(name);
    const data = await readModuleBytes(path);
    const info = readModinfo(data, path);
    const vermagic = info.get('vermagic')?.[0] ?? '';
    if (!vermagic.startsWith(`${release} `)) {
      throw setupError(`module ${path} was built for "${vermagic}", not kernel ${release}`);
    }
    const deps = (info.get('depends')?.[0] ?? '').split(',').filter(Boolean);
    for (const dep of deps) await visit(dep, name);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, file: basename(path).replace(MODULE_SUFFIX, '.ko'), data });
  };

  for (const name of wanted) await visit(name, null);
  return ordered;
}

async function indexModules(dir: string): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !MODULE_SUFFIX.test(entry.name)) continue;
    index.set(moduleName(entry.name), join(entry.parentPath ?? entry.path, entry.name));
  }
  return index;
}

async function readBuiltin(modulesDir: string): Promise<Set<string>> {
  try {
    const text = await readFile(join(modulesDir, 'modules.builtin'), 'utf8');
    return new Set(text.split('\n').filter(Boolean).map(moduleName));
  } catch {
    return new Set();
  }
}

async function readModuleBytes(path: string): Promise<Buffer> {
  if (path.endsWith('.ko')) return readFile(path);
  if (path.endsWith('.gz')) return gunzipSync(await readFile(path));
  const tool = path.endsWith('.xz') ? 'xz' : 'zstd';
  try {
    return (await runRaw(tool, ['-dc', path])).stdout;
  } catch (err) {
    if (err instanceof CellError && err.code === ErrorCodes.HOST_MISSING_DEPENDENCY) {
      const pkg = tool === 'xz' ? 'xz-utils' : 'zstd';
      throw new CellError(
        ErrorCodes.HOST_MISSING_DEPENDENCY,
        `the guest kernel's modules are ${tool}-compressed and ${tool} is missing (run: sudo apt-get install ${pkg})`,
      );
    }
    throw err;
  }
}

function setupError(message: string): CellError {
  return new CellError(ErrorCodes.SETUP_FAILED, message);
}
