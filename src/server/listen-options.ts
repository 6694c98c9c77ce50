import { parseArgs } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { isLoopbackHostname } from '../domain/network.js';
import { DEFAULT_REMOTE_LIMITS, type RemoteLimits } from './remote-access.js';

/** celld's command line: where else than its unix socket it listens (docs/remote.md). */
export interface CelldOptions {
  help: boolean;
  listen?: { host: string; port: number };
  tls?: { certFile: string; keyFile: string };
  /** Plain HTTP on the TCP listener: loopback only. */
  insecureHttp: boolean;
  /** What each token may do on the TCP listener. */
  limits: RemoteLimits;
}

export const CELLD_USAGE = `Usage: celld [--listen HOST:PORT] [--tls-cert FILE --tls-key FILE | --insecure-http]

celld serves cellvm's API on CELL_HOME/celld.sock (cell starts it on demand). With --listen (or
CELL_LISTEN) it serves the same API over TCP too, to callers with a bearer token (cell token create):
  --listen HOST:PORT   e.g. 0.0.0.0:7070 (port 0: any free one; remote.json in the home says which)
  --tls-cert FILE      the certificate to serve (PEM) ...
  --tls-key FILE       ... and its key; without both, a self-signed certificate is made once in
                       CELL_HOME/tls and its SHA-256 fingerprint printed (clients pin it:
                       CELL_TLS_FINGERPRINT)
  --insecure-http      plain HTTP: only on a loopback address (127.0.0.1, ::1)
  --token-rate N       requests a second each token may send, sustained; twice that at once
                       (default ${DEFAULT_REMOTE_LIMITS.requestsPerSecond}; CELL_TOKEN_RATE)
  --token-creates N    VM creates (run, create, fork, actions, builds) each token may have in flight
                       (default ${DEFAULT_REMOTE_LIMITS.concurrentCreates}; CELL_TOKEN_CREATES)
Host paths (copy, import, export, build files, -v folders) are refused over TCP. The web dashboard
is at /ui/ on the same listener (cell ui prints a link with a token). docs/remote.md.
`;

function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]+)):(\d{1,5})$/.exec(text.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--listen takes HOST:PORT (0.0.0.0:7070, [::]:7070, 127.0.0.1:0), not ${JSON.stringify(text)}`);
  return { host: m[1] ?? m[2]!, port };
}

export function parseCelldArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): CelldOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      options: {
        help: { type: 'boolean', short: 'h' },
        listen: { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'insecure-http': { type: 'boolean' },
        'token-rate': { type: 'string' },
        'token-creates': { type: 'string' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${(err as Error).message} (celld --help)`);
  }
  const listenText = values.listen ?? env.CELL_LISTEN;
  const listen = listenText ? parseListen(listenText) : undefined;
  const certFile = values['tls-cert'];
  const keyFile = values['tls-key'];
  if (Boolean(certFile) !== Boolean(keyFile)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--tls-cert and --tls-key go together');
  const insecureHttp = values['insecure-http'] ?? false;
  if (!listen && (certFile || insecureHttp)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--tls-cert, --tls-key and --insecure-http are for --listen');
  if (insecureHttp && certFile) throw new CellError(ErrorCodes.INVALID_ARGUMENT, '--insecure-http or a certificate, not both');
  if (insecureHttp && listen && !isLoopbackHostname(listen.host)) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `plain HTTP only on a loopback address, not ${listen.host}: tokens would cross the network in the clear (leave out --insecure-http for TLS)`);
  }
  const limits: RemoteLimits = {
    requestsPerSecond: limit('--token-rate', values['token-rate'] ?? env.CELL_TOKEN_RATE, DEFAULT_REMOTE_LIMITS.requestsPerSecond, 100_000),
    concurrentCreates: limit('--token-creates', values['token-creates'] ?? env.CELL_TOKEN_CREATES, DEFAULT_REMOTE_LIMITS.concurrentCreates, 10_000),
  };
  return { help: values.help ?? false, ...(listen ? { listen } : {}), ...(certFile && keyFile ? { tls: { certFile, keyFile } } : {}), insecureHttp, limits };
}

function limit(flag: string, text: string | undefined, fallback: number, max: number): number {
  if (text === undefined || text.trim() === '') return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < 1 || n > max) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${flag} takes a whole number from 1 to ${max}, not ${JSON.stringify(text)}`);
  return n;
}
