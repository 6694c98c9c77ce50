import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import bcrypt from 'bcryptjs';

/**
 * A real CNCF Distribution registry (Debian's docker-registry) on 127.0.0.1 with a random port and
 * a temp storage dir: anonymous, with htpasswd basic auth, or with token auth against a token
 * server the test runs. `stop` kills it by pid and removes its files.
 */
export const REGISTRY_BIN = '/usr/bin/docker-registry';

export type RegistryAuth =
  | { kind: 'none' }
  | { kind: 'basic'; user: string; password: string }
  | { kind: 'token'; realm: string; service: string; issuer: string; certPath: string };

export interface RunningRegistry {
  host: string;
  port: number;
  storage: string;
  stop: () => Promise<void>;
  logs: () => string;
}

export function ensureRegistryInstalled(): void {
  if (existsSync(REGISTRY_BIN)) return;
  const r = spawnSync('apt-get', ['install', '-y', '-q', 'docker-registry'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  if (r.status !== 0 || !existsSync(REGISTRY_BIN)) throw new Error('docker-registry is missing and could not be installed (apt-get install docker-registry)');
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

function authYaml(auth: RegistryAuth, dir: string): string {
  if (auth.kind === 'basic') {
    const file = join(dir, 'htpasswd');
    writeFileSync(file, `${auth.user}:${bcrypt.hashSync(auth.password, 5)}\n`);
    return `auth:\n  htpasswd:\n    realm: cell-test\n    path: ${file}\n`;
  }
  if (auth.kind === 'token') {
    return `auth:\n  token:\n    realm: ${auth.realm}\n    service: ${auth.service}\n    issuer: ${auth.issuer}\n    rootcertbundle: ${auth.certPath}\n`;
  }
  return '';
}

export interface RegistryPlace {
  /** Listen address (default 127.0.0.1). */
  address?: string;
  /** Run inside this network namespace (made by the test, see helpers/netns.ts). */
  netns?: string;
}

export async function startRegistry(auth: RegistryAuth = { kind: 'none' }, place: RegistryPlace = {}): Promise<RunningRegistry> {
  ensureRegistryInstalled();
  const dir = mkdtempSync('/tmp/cellt-registry-');
  const storage = join(dir, 'storage');
  const address = place.address ?? '127.0.0.1';
  const port = place.netns ? 5000 : await freePort();
  const config = join(dir, 'config.yml');
  writeFileSync(
    config,
    `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${storage}
  delete:
    enabled: true
http:
  addr: ${address}:${port}
${authYaml(auth, dir)}`,
  );
  let output = '';
  // `ip netns exec` execs the registry in place: the pid is the registry's.
  const argv = place.netns ? ['ip', ['netns', 'exec', place.netns, REGISTRY_BIN, 'serve', config]] as const : [REGISTRY_BIN, ['serve', config]] as const;
  const child: ChildProcess = spawn(argv[0], [...argv[1]], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`docker-registry exited at start: ${output}`);
    }
    try {
      const res = await fetch(`http://${address}:${port}/v2/`);
      await res.body?.cancel();
      if (res.status === 200 || res.status === 401) break;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`docker-registry did not answer on port ${port}: ${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { host: `${address}:${port}`, port, storage, stop, logs: () => output };
}

/** Where Distribution keeps a blob's bytes in its filesystem storage. */
export function registryBlobPath(storage: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}
