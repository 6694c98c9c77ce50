import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { aptCandidate, aptDownload, aptStateFingerprint, aptUpdateOnce } from './apt.js';
import { run } from './exec.js';
import {
  fsyncPath,
  makeWorkDir,
  publishDir,
  readJsonIfExists,
  sha256File,
  sha256Hex,
  writeFileAtomic,
  writeFileSynced,
} from './files.js';
import { bootableKernel } from './kernel-image.js';
import { GUEST_MODULES, resolveGuestModules, SHARE_MODULES, type ModuleGroup } from './kernel-modules.js';
import type { ProgressFn } from './types.js';

/**
 * The guest kernel: Debian's cloud kernel, downloaded with apt (never installed on the host),
 * reduced to the kernel image plus the few modules the guest loads. Stored as
 * `<cache>/kernel/<release>/{vmlinux or vmlinuz, modules/*.ko, manifest.json}`: the image is the
 * uncompressed ELF (kernel-image.ts) when it could be unpacked, else Debian's bzImage. The manifest is written
 * last and names the package version, so a directory with a manifest for the current candidate
 * is complete and up to date.
 */
export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
/** Bump when what is kept from the package, or how, changes: older cached kernels are rebuilt. */
const KERNEL_LAYOUT = 3; // 2: the share modules (virtio-fs), with a group per module; 3: the uncompressed image
const STEP = 'kernel';

export interface KernelManifest {
  layout: number;
  release: string;
  metaPackage: string;
  metaVersion: string;
  package: string;
  packageVersion: string;
  /** sha256 of the linux-image-<release> .deb the files came from. */
  debSha256: string;
  /** `elf`: unpacked from the bzImage's payload (booted without decompressing); `bzimage`: as shipped, with why. */
  image: { file: string; sha256: string; size: number; format: 'elf' | 'bzimage'; note: string };
  /** In load order within each group: dependencies before dependents. */
  modules: { name: string; file: string; sha256: string; size: number; group: ModuleGroup }[];
  createdAt: string;
}

export interface GuestKernel {
  dir: string;
  /** What QEMU's -kernel loads. */
  imagePath: string;
  release: string;
  /** "sha256:<hex>" of the image. */
  digest: string;
  manifest: KernelManifest;
}

/** What `apt-cache` said the candidate was, and the apt state it said it in. */
interface CandidateMemo {
  aptState: string;
  metaVersion: string;
}

export async function ensureKernel(opts: {
  cacheDir: string;
  /** May run `apt-get update` when apt has no candidate (root and installs allowed). */
  mayUpdateApt: boolean;
  onProgress?: ProgressFn;
}): Promise<GuestKernel> {
  const root = join(opts.cacheDir, 'kernel');
  const cached = await listCachedKernels(root);

  const metaVersion = await candidateVersion(root, opts.mayUpdateApt);
  if (metaVersion === null) {
    const newest = cached[0];
    if (newest) return report(opts, 'cached', newest, 'apt has no candidate, using the cached kernel');
    throw new CellError(
      ErrorCodes.SETUP_FAILED,
      `apt knows no package ${KERNEL_META_PACKAGE}: is Debian's main archive in the apt sources (and apt-get update run)?`,
    );
  }
  const current = cached.find((k) => k.manifest.metaVersion === metaVersion);
  if (current) return report(opts, 'cached', current);

  opts.onProgress?.({ step: STEP, status: 'start', detail: `${KERNEL_META_PACKAGE} ${metaVersion}` });
  let built: GuestKernel;
  try {
    built = await downloadAndExtract(opts.cacheDir, root, metaVersion);
  } catch (err) {
    // Offline (or the archive moved on): a kernel we already have still boots.
    const newest = cached[0];
    if (!newest) throw err;
    const why = (err instanceof Error ? err.message : String(err)).slice(0, 400);
    return report(opts, 'cached', newest, `download failed (${why}), using the cached kernel`);
  }
  return report(opts, 'done', built, built.manifest.image.note);
}

function report(
  opts: { onProgress?: ProgressFn },
  status: 'cached' | 'done',
  kernel: GuestKernel,
  note?: string,
): GuestKernel {
  opts.onProgress?.({ step: STEP, status, detail: note ? `${kernel.release}: ${note}` : kernel.release });
  return kernel;
}

/** The candidate version of the meta package; asks apt only when apt's state changed since last time. */
async function candidateVersion(root: string, mayUpdateApt: boolean): Promise<string | null> {
  const memoPath = join(root, 'candidate.json');
  const aptState = await aptStateFingerprint();
  const memo = await readJsonIfExists<CandidateMemo>(memoPath);
  if (memo?.aptState === aptState) return memo.metaVersion;

  let candidate = await aptCandidate(KERNEL_META_PACKAGE);
  if (!candidate && mayUpdateApt) {
    await aptUpdateOnce();
    candidate = await aptCandidate(KERNEL_META_PACKAGE);
  }
  if (!candidate) return null;
  await writeFileAtomic(
    memoPath,
    JSON.stringify({ aptState: await aptStateFingerprint(), metaVersion: candidate.version } satisfies CandidateMemo),
  );
  return candidate.version;
}

/** Complete cached kernels of the current layout, newest first. */
async function listCachedKernels(root: string): Promise<GuestKernel[]> {
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return [];
  }
  const kernels: GuestKernel[] = [];
  for (const name of names) {
    const dir = join(root, name);
    const manifest = await readJsonIfExists<KernelManifest>(join(dir, 'manifest.json'));
    if (manifest?.layout !== KERNEL_LAYOUT || manifest.release !== name) continue;
    kernels.push(toGuestKernel(dir, manifest));
  }
  return kernels.sort((a, b) => b.manifest.createdAt.localeCompare(a.manifest.createdAt));
}

export function toGuestKernel(dir: string, manifest: KernelManifest): GuestKernel {
  return {
    dir,
    imagePath: join(dir, manifest.image.file),
    release: manifest.release,
    digest: `sha256:${manifest.image.sha256}`,
    manifest,
  };
}

async function downloadAndExtract(cacheDir: string, root: string, metaVersion: string): Promise<GuestKernel> {
  // Private (0700) all the way down: root unpacks the .debs apt downloads here.
  const work = await makeWorkDir(cacheDir, 'kernel');
  try {
    const downloads = join(work, 'debs');
    await mkdir(downloads, { mode: 0o700 });
    const metaDeb = await aptDownload(KERNEL_META_PACKAGE, metaVersion, downloads);
    const depends = (await run('dpkg-deb', ['-f', metaDeb, 'Depends'])).stdout;
    const imagePackage = /(linux-image-[0-9][^\s,(]*)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?/.exec(depends);
    if (!imagePackage?.[1]) {
      throw new CellError(ErrorCodes.SETUP_FAILED, `${KERNEL_META_PACKAGE} ${metaVersion} depends on no linux-image package: "${depends.trim()}"`);
    }
    const pkg = imagePackage[1];
    const pkgVersion = imagePackage[2] ?? metaVersion;
    const deb = await aptDownload(pkg, pkgVersion, downloads);

    const tree = join(work, 'tree');
    await run('dpkg-deb', ['-x', deb, tree]);
    const release = pkg.replace(/^linux-image-/, '');
    const vmlinuzSource = join(tree, 'boot', `vmlinuz-${release}`);
    await stat(vmlinuzSource).catch(() => {
      throw new CellError(ErrorCodes.SETUP_FAILED, `${pkg} ${pkgVersion} contains no boot/vmlinuz-${release}`);
    });
    const modulesDir = join(tree, 'lib', 'modules', release);
    const bootModules = await resolveGuestModules(modulesDir, release, GUEST_MODULES);
    const shareModules = await resolveGuestModules(modulesDir, release, SHARE_MODULES, bootModules.map((m) => m.name));
    const modules = [...bootModules.map((m) => ({ ...m, group: 'boot' as const })), ...shareModules.map((m) => ({ ...m, group: 'share' as const }))];

    const out = join(work, release);
    await mkdir(join(out, 'modules'), { recursive: true });
    const bzImage = await readFile(vmlinuzSource);
    const image = await bootableKernel(bzImage);
    await writeFileSynced(join(out, image.file), image.data);
    const moduleEntries: KernelManifest['modules'] = [];
    for (const m of modules) {
      const file = join('modules', m.file);
      await writeFileSynced(join(out, file), m.data);
      moduleEntries.push({ name: m.name, file, sha256: sha256Hex(m.data), size: m.data.length, group: m.group });
    }
    await fsyncPath(join(out, 'modules'));
    const manifest: KernelManifest = {
      layout: KERNEL_LAYOUT,
      release,
      metaPackage: KERNEL_META_PACKAGE,
      metaVersion,
      package: pkg,
      packageVersion: pkgVersion,
      debSha256: await sha256File(deb),
      image: { file: image.file, sha256: sha256Hex(image.data), size: image.data.length, format: image.format, note: image.note },
      modules: moduleEntries,
      createdAt: new Date().toISOString(),
    };
    await writeFileSynced(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2));
    // replace: a directory of this release from an older package version or layout gives way.
    await publishDir(out, join(root, release), true);
    return toGuestKernel(join(root, release), manifest);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
