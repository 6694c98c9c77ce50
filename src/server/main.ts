import { rmSync } from 'node:fs';
import pino from 'pino';
import { cellPaths } from '../domain/paths.js';
import { CellError, ErrorCodes, toCellError } from '../domain/errors.js';
import { HOST_CREDS_ADDON, hostCreds } from '../engine/callers.js';
import { Engine } from '../engine/engine.js';
import { buildApp } from './app.js';
import { acquireDaemonLock } from './daemon-lock.js';
import { restrictSocket, socketGroup } from './socket-access.js';

/**
 * celld: the daemon behind `cell`. Serves the HTTP API on CELL_HOME/celld.sock. VMs are separate
 * processes: stopping celld leaves them running, and the next celld reconnects to them.
 */
async function main(): Promise<void> {
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
