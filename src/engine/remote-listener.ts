import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { writeFileAtomic } from '../store/atomic-file.js';

/**
 * The files of celld's TCP listener in its home (docs/remote.md): its certificate when celld made
 * one (tls/), and remote.json, which says where it listens while it does (`cell info`, clients on
 * this host, tests with port 0).
 */
export interface RemoteInfo {
  url: string;
  /** The certificate's SHA-256; null for plain HTTP. */
  fingerprint: string | null;
}

const remoteFile = (home: string) => join(home, 'remote.json');

export async function writeRemoteInfo(home: string, info: RemoteInfo): Promise<void> {
  await writeFileAtomic(remoteFile(home), JSON.stringify(info) + '\n', 0o644);
}

export function removeRemoteInfo(home: string): void {
  rmSync(remoteFile(home), { force: true });
}

export function readRemoteInfo(home: string): RemoteInfo | null {
  try {
    const doc = JSON.parse(readFileSync(remoteFile(home), 'utf8')) as { url?: unknown; fingerprint?: unknown };
    return typeof doc.url === 'string' ? { url: doc.url, fingerprint: typeof doc.fingerprint === 'string' ? doc.fingerprint : null } : null;
  } catch {
    return null;
  }
}

export interface TlsMaterial {
  cert: string;
  key: string;
  /** SHA-256 of the certificate, as `AB:CD:...`: what a client pins (CELL_TLS_FINGERPRINT). */
  fingerprint: string;
  /** Generated here (true) or given (false). */
  generated: boolean;
}

/**
 * The TCP listener's certificate: the one given (--tls-cert/--tls-key), else one generated once
 * into the home's tls/ folder and kept (its fingerprint stays what clients pinned), valid for
 * localhost, this host's name, its loopback addresses and the address listened on.
 */
export async function tlsMaterial(home: string, listenHost: string, given?: { certFile: string; keyFile: string }): Promise<TlsMaterial> {
  if (given) {
    const read = (file: string, what: string) => {
      try {
        return readFileSync(file, 'utf8');
      } catch (err) {
        throw new CellError(ErrorCodes.INVALID_ARGUMENT, `cannot read the TLS ${what} ${file}: ${(err as Error).message}`);
      }
    };
    const cert = read(given.certFile, 'certificate');
    return { cert, key: read(given.keyFile, 'key'), fingerprint: fingerprintOf(cert), generated: false };
  }
  const dir = join(home, 'tls');
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  if (!existsSync(certFile) || !existsSync(keyFile)) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const names = [...new Set(['localhost', hostname()])].map((value) => ({ type: 2 as const, value }));
    const ips = [...new Set(['127.0.0.1', '::1', ...(isIP(listenHost) && listenHost !== '0.0.0.0' && listenHost !== '::' ? [listenHost] : [])])].map((ip) => ({ type: 7 as const, ip }));
    const now = new Date();
    const pems = await generate([{ name: 'commonName', value: `celld on ${hostname()}` }], {
      keyType: 'ec',
      curve: 'P-256',
      algorithm: 'sha256',
      notBeforeDate: now,
      notAfterDate: new Date(now.getTime() + 825 * 86_400_000),
      extensions: [
        { name: 'basicConstraints', cA: false },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
        { name: 'extKeyUsage', serverAuth: true },
        { name: 'subjectAltName', altNames: [...names, ...ips] },
      ],
    });
    // The key first: a cert without its key is regenerated; a key without its cert too.
    await writeFileAtomic(keyFile, pems.private, 0o600);
    await writeFileAtomic(certFile, pems.cert, 0o644);
  }
  const cert = readFileSync(certFile, 'utf8');
  return { cert, key: readFileSync(keyFile, 'utf8'), fingerprint: fingerprintOf(cert), generated: true };
}

export function fingerprintOf(certPem: string): string {
  try {
    return new X509Certificate(certPem).fingerprint256;
  } catch (err) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `the TLS certificate is not a PEM certificate: ${(err as Error).message}`);
  }
}
