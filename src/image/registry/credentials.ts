import { homedir } from 'node:os';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { writeFileAtomic } from '../../store/atomic-file.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { DOCKER_HUB } from '../reference.js';

/**
 * Registry credentials. cellvm's own file (written by `login`) uses Docker's config.json layout,
 * `{"auths": {"host": {"auth": base64("user:password")}}}`, mode 0600, so people can read it the
 * same way; it wins over `~/.docker/config.json` (or $DOCKER_CONFIG/config.json), which is only
 * read. Docker credential helpers (`credsStore`, `credHelpers`) are not supported.
 */
export interface Credential {
  username: string;
  password: string;
}

export interface CredentialSources {
  /** cellvm's credential file. */
  credentialsPath?: string;
  /** Docker's config.json; null to not read one; default $DOCKER_CONFIG or ~/.docker. */
  dockerConfigPath?: string | null;
}

interface AuthFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string }>;
  [key: string]: unknown;
}

export function defaultDockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.DOCKER_CONFIG || join(homedir(), '.docker'), 'config.json');
}

/** `https://index.docker.io/v1/` and `docker.io` name the same registry; so do `host:5000` and `http://host:5000/`. */
export function registryKey(key: string): string {
  const host = key.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '').toLowerCase();
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? DOCKER_HUB : host;
}

async function readAuthFile(path: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as AuthFile;
  } catch {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `credential file ${path} is not valid JSON`);
  }
}

function decode(entry: { auth?: string; username?: string; password?: string }, path: string): Credential | undefined {
  if (entry.username && entry.password !== undefined) return { username: entry.username, password: entry.password };
  if (!entry.auth) return undefined;
  const text = Buffer.from(entry.auth, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `credential file ${path}: an "auth" value is not base64 of user:password`);
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

function lookup(file: AuthFile | undefined, registry: string, path: string): Credential | undefined {
  const wanted = registryKey(registry);
  for (const [key, entry] of Object.entries(file?.auths ?? {})) {
    if (registryKey(key) === wanted) {
      const c = decode(entry, path);
      if (c) return c;
    }
  }
  return undefined;
}

export async function findCredential(registry: string, sources: CredentialSources = {}): Promise<Credential | undefined> {
  if (sources.credentialsPath) {
    const own = lookup(await readAuthFile(sources.credentialsPath), registry, sources.credentialsPath);
    if (own) return own;
  }
  const docker = sources.dockerConfigPath === undefined ? defaultDockerConfigPath() : sources.dockerConfigPath;
  if (docker) return lookup(await readAuthFile(docker), registry, docker);
  return undefined;
}

/** Rewrites the file atomically with mode 0600 in a 0700 directory. */
async function writeAuthFile(path: string, file: AuthFile): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, `${JSON.stringify(file, null, 2)}\n`, 0o600);
}

export async function saveCredential(path: string, registry: string, cred: Credential): Promise<void> {
  const file = (await readAuthFile(path)) ?? {};
  const auths = { ...(file.auths ?? {}) };
  for (const key of Object.keys(auths)) if (registryKey(key) === registryKey(registry)) delete auths[key];
  auths[registryKey(registry)] = { auth: Buffer.from(`${cred.username}:${cred.password}`).toString('base64') };
  await writeAuthFile(path, { ...file, auths });
}

/** Returns whether there was anything to remove. */
export async function removeCredential(path: string, registry: string): Promise<boolean> {
  const file = await readAuthFile(path);
  if (!file?.auths) return false;
  const auths = { ...file.auths };
  let removed = false;
  for (const key of Object.keys(auths)) {
    if (registryKey(key) === registryKey(registry)) {
      delete auths[key];
      removed = true;
    }
  }
  if (removed) await writeAuthFile(path, { ...file, auths });
  return removed;
}
