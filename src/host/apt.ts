import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { run } from './exec.js';
import { ensurePrivateDir } from '../store/private-files.js';
import { sha256File, sha256Hex } from './files.js';

/** apt as a package source: candidate versions, `apt-get download` (never install), one update per process. */

export interface AptCandidate {
  package: string;
  version: string;
  depends: string;
}

const APT_ENV = { DEBIAN_FRONTEND: 'noninteractive' };

let updating: Promise<void> | null = null;

/** `apt-get update`, at most once per process (a failure is not remembered, so a retry may run it again). */
export function aptUpdateOnce(): Promise<void> {
  updating ??= run('apt-get', ['update', '-q'], { env: APT_ENV }).then(
    () => undefined,
    (err: unknown) => {
      updating = null;
      throw err;
    },
  );
  return updating;
}

/** The version `apt-get download NAME` would fetch, or null when apt knows no such package. */
export async function aptCandidate(pkg: string): Promise<AptCandidate | null> {
  let stdout: string;
  try {
    ({ stdout } = await run('apt-cache', ['show', '--no-all-versions', pkg]));
  } catch (err) {
    if (err instanceof CellError && err.code === ErrorCodes.SETUP_FAILED) return null;
    throw err;
  }
  const field = (name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(stdout)?.[1]?.trim();
  const version = field('Version');
  if (!version) return null;
  return { package: pkg, version, depends: field('Depends') ?? '' };
}

/**
 * A cheap fingerprint of everything that decides apt's candidate versions (package lists, sources,
 * pinning): names, sizes and mtimes only. `apt-cache` takes ~0.4 s here (its binary cache is
 * disabled in Debian's container images), too slow for a set-up that should be a no-op; while this
 * fingerprint is unchanged, a remembered candidate is still the candidate.
 */
export async function aptStateFingerprint(): Promise<string> {
  const parts: string[] = [];
  for (const dir of ['/var/lib/apt/lists', '/etc/apt/sources.list.d', '/etc/apt/preferences.d']) {
    let names: string[];
    try {
      names = (await readdir(dir)).sort();
    } catch {
      continue;
    }
    for (const name of names) parts.push(await statLine(join(dir, name)));
  }
  for (const file of ['/etc/apt/sources.list', '/etc/apt/preferences']) parts.push(await statLine(file));
  return sha256Hex(parts.join('\n'));
}

async function statLine(path: string): Promise<string> {
  try {
    const s = await stat(path);
    return `${path} ${s.isDirectory() ? 'd' : s.size} ${s.mtimeMs}`;
  } catch {
    return `${path} -`;
  }
}

/**
 * `apt-get download NAME=VERSION` into `dir`; returns the .deb's path. Root unpacks that .deb, so
 * nobody else may be able to swap it: `dir` must be private (0700, ours; refused otherwise) and
 * apt downloads as root into it (APT::Sandbox::User=root: its `_apt` user could not write there,
 * and a folder `_apt` can write to is one other users could too). The file is then checked
 * against the SHA256 of apt's signed index, so what we use is what the archive published.
 */
export async function aptDownload(pkg: string, version: string, dir: string): Promise<string> {
  ensurePrivateDir(dir, 'the download folder');
  await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', `${pkg}=${version}`], { cwd: dir, env: APT_ENV });
  const deb = (await readdir(dir)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (!deb) throw new CellError(ErrorCodes.SETUP_FAILED, `apt-get download ${pkg}=${version} produced no .deb in ${dir}`);
  const path = join(dir, deb);
  const expected = await indexSha256(pkg, version);
  if (expected) {
    const actual = await sha256File(path);
    if (actual !== expected) {
      throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${deb} does not match apt's index (sha256 ${actual}, expected ${expected}): not using it`, { path, expected, actual });
    }
  }
  return path;
}

/** The SHA256 apt's index gives for NAME=VERSION, or null when it gives none. */
async function indexSha256(pkg: string, version: string): Promise<string | null> {
  const { stdout } = await run('apt-cache', ['show', '--no-all-versions', `${pkg}=${version}`]);
  return /^SHA256: ([0-9a-f]{64})$/m.exec(stdout)?.[1] ?? null;
}
