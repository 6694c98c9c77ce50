import { rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { cellPaths } from '../domain/paths.js';
import { CellError, ErrorCodes, toCellError } from '../domain/errors.js';
import { HOST_CREDS_ADDON, hostCreds } from '../engine/callers.js';
import { Engine } from '../engine/engine.js';
import { buildApp } from './app.js';
import { acquireDaemonLock } from './daemon-lock.js';
import { restrictSocket, socketGroup } from './socket-access.js';
import { CELLD_USAGE, parseCelldArgs } from './listen-options.js';
import { removeRemoteInfo, tlsMaterial, writeRemoteInfo } from '../engine/remote-listener.js';

/**
 * celld: the daemon behind `cell`. Serves the HTTP API on CELL_HOME/celld.sock. VMs are separate
 * processes: stopping celld leaves them running, and the next celld reconnects to them.
 */
async function main(): Promise<void> {
  const options = parseCelldArgs(process.argv.slice(2));
  if (options.help) {
    process.stdout.write(CELLD_USAGE);
    return;
  }
  const paths = cellPaths();
  // Before anything is written there: a home of ours, private (see README "Who may use celld").
  const group = socketGroup();
  Engine.prepareHome(paths, group);
  // Others may connect: celld must know who they are to use their file access, not root's.
  if (group !== null && process.getuid?.() === 0 && !hostCreds()) {
    throw new CellError(ErrorCodes.HOST_MISSING_DEPENDENCY, `celld's host-creds addon is missing (${HOST_CREDS_ADDON}); run npm run build, or start celld without a socket group`);
  }
  const release = acquireDaemonLock(paths.daemonPid);
  const logger = pino({ level: process.env.CELL_LOG_LEVEL ?? 'info', base: { pid: process.pid } }, pino.destination({ dest: paths.daemonLog, append: true, sync: false }));
  const engine = await Engine.open(paths, { log: { info: (message) => logger.info(message), warn: (message) => logger.warn(message) } });
  // The same API over TCP, behind tokens (docs/remote.md); up before the socket, so a client that
  // finds celld answering finds remote.json written.
  removeRemoteInfo(paths.home);
  let remote: ReturnType<typeof buildApp> | undefined;
  if (options.listen) {
    const tls = options.insecureHttp ? undefined : await tlsMaterial(paths.home, options.listen.host, options.tls);
    remote = buildApp(engine, logger, { remote: { limits: options.limits, ...(tls ? { tls } : {}) } });
    await remote.listen({ host: options.listen.host, port: options.listen.port });
    const { port } = remote.server.address() as AddressInfo;
    const host = options.listen.host.includes(':') ? `[${options.listen.host}]` : options.listen.host;
    const url = `${tls ? 'https' : 'http'}://${host}:${port}`;
    await writeRemoteInfo(paths.home, { url, fingerprint: tls?.fingerprint ?? null });
    // However celld ends (a later start-up step failing too), it no longer listens there.
    process.once('exit', () => removeRemoteInfo(paths.home));
    const line = `celld: API on ${url}${tls ? ` (TLS certificate SHA-256 ${tls.fingerprint}${tls.generated ? ', self-signed: clients set CELL_TLS_FINGERPRINT to it' : ''})` : ' (plain HTTP, loopback only)'}; requests need a bearer token (cell token create)`;
    logger.info({ url, fingerprint: tls?.fingerprint ?? null }, 'celld listening on TCP');
    process.stderr.write(line + '\n');
  }

  const app = buildApp(engine, logger, { socketGroup: group });
  rmSync(paths.socket, { force: true });
  await app.listen({ path: paths.socket });
  restrictSocket(paths.socket, group);
  logger.info({ socket: paths.socket, home: paths.home, socketGroup: group }, 'celld listening');

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'celld stopping (VMs keep running)');
    await remote?.close().catch(() => {});
    removeRemoteInfo(paths.home);
    await app.close().catch(() => {});
    await engine.close().catch(() => {});
    rmSync(paths.socket, { force: true });
    release();
    logger.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  const e = toCellError(err);
  process.stderr.write(`celld: ${e.message}\n`);
  process.exit(e.code === 'conflict' ? 3 : 1);
});
