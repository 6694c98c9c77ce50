import type http from 'node:http';
import type { PeerCertificate } from 'node:tls';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { isLoopbackHostname } from '../domain/network.js';
import type { TransportEndpoint } from './transport.js';

/** Where a remote celld is and how to trust it (docs/remote.md). */
export interface RemoteOptions {
  /** `https://host:7070` (or `http://127.0.0.1:PORT` for a loopback listener in plain HTTP). */
  url: string;
  /** A bearer token (`cell token create` on celld's host). */
  token?: string;
  /** The SHA-256 fingerprint of celld's self-signed certificate (`AB:CD:...`, as celld prints it): trusted alone. */
  tlsFingerprint?: string;
  /** PEM certificates to trust instead of the system's (a private CA). */
  ca?: string;
}

const normalFingerprint = (f: string) => f.replace(/[^0-9a-fA-F]/g, '').toUpperCase();

function pem(cert: PeerCertificate): string {
  const b64 = cert.raw.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/**
 * The certificate celld presents, if its fingerprint is the one pinned; fetched over a TLS
 * connection that sends nothing, so no token goes anywhere before the server is known.
 */
async function pinnedCertificate(url: URL, fingerprint: string, timeoutMs: number): Promise<string> {
  const tls = await import('node:tls');
  const want = normalFingerprint(fingerprint);
  return new Promise((resolve, reject) => {
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const socket = tls.connect({ host, port: Number(url.port || 443), rejectUnauthorized: false, ...(/^[\d.:]+$/.test(host) ? {} : { servername: host }) });
    const fail = (err: Error) => {
      socket.destroy();
      reject(new CellError(ErrorCodes.DAEMON_UNAVAILABLE, `cannot talk to celld on ${url.origin}: ${err.message}`, undefined, { cause: err }));
    };
    socket.setTimeout(timeoutMs, () => fail(new Error(`no TLS answer within ${timeoutMs / 1000} s`)));
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      if (!cert?.raw || normalFingerprint(cert.fingerprint256) !== want) {
        reject(new CellError(ErrorCodes.PERMISSION_DENIED, `celld on ${url.origin} presented a certificate with fingerprint ${cert?.fingerprint256 ?? 'none'}, not the pinned ${fingerprint}: not sending the token there`));
        return;
      }
      resolve(pem(cert));
    });
  });
}

/** The transport endpoint for a celld reached over TCP. */
export async function remoteEndpoint(opts: RemoteOptions, timeoutMs: number): Promise<TransportEndpoint> {
  let url: URL;
  try {
    url = new URL(opts.url);
  } catch {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `CELL_HOST must be a URL such as https://host:7070, not ${JSON.stringify(opts.url)}`);
  }
  if (url.protocol === 'http:') {
    if (!isLoopbackHostname(url.hostname)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `plain HTTP to ${url.host} would send the token in the clear: use https:// (celld serves TLS unless told --insecure-http on loopback)`);
    }
    const http = await import('node:http');
    return { url, token: opts.token, agent: new http.Agent({ keepAlive: true }), request: http.request };
  }
  if (url.protocol !== 'https:') throw new CellError(ErrorCodes.INVALID_ARGUMENT, `CELL_HOST must be an https:// URL, not ${url.protocol}`);
  const https = await import('node:https');
  let agent: http.Agent;
  if (opts.tlsFingerprint) {
    const want = normalFingerprint(opts.tlsFingerprint);
    const ca = await pinnedCertificate(url, opts.tlsFingerprint, timeoutMs);
    // That certificate alone is trusted, and it is the name: a self-signed one names whatever host it was made on.
    agent = new https.Agent({
      keepAlive: true,
      ca,
      checkServerIdentity: (_host, cert) => (normalFingerprint(cert.fingerprint256) === want ? undefined : new Error(`certificate fingerprint ${cert.fingerprint256} is not the pinned one`)),
    });
  } else {
    agent = new https.Agent({ keepAlive: true, ...(opts.ca ? { ca: opts.ca } : {}) });
  }
  return { url, token: opts.token, agent, request: https.request as unknown as typeof http.request };
}
