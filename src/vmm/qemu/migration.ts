import { createReadStream } from 'node:fs';
import { chmod, chown, mkdtemp, open, rm } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { QmpClient } from './qmp.js';

/**
 * Migration streams go over unix sockets, never `exec:` (a shell QEMU would have to spawn, which
 * `-sandbox spawn=deny` forbids; QEMU 7.2 has no `file:` URI, and Node cannot hand QEMU a file
 * descriptor over QMP, having no SCM_RIGHTS):
 * - save: celld listens on a socket QEMU's (unprivileged) user alone may connect to, QEMU
 *   (`migrate uri=unix:PATH`) connects and streams, celld writes the file and fsyncs it;
 * - restore: QEMU was started with `-incoming unix:PATH` (it made the socket while still root, in
 *   the machine's own 0700 folder), celld connects and streams the file into it.
 */

interface MigrationStatus {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

/** Who may connect to a save socket: QEMU's user when it runs as one (celld root), else celld's. */
export interface SocketPeer {
  uid: number;
  gid: number;
}

async function setIgnoreShared(qmp: QmpClient, ignoreShared: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }],
  });
}

async function waitMigration(qmp: QmpClient, what: string, deadline: number, timeoutMs: number): Promise<MigrationStatus> {
  for (;;) {
    const status = await qmp.execute<MigrationStatus>('query-migrate');
    if (status.status === 'completed') return status;
    if (status.status === 'failed' || status.status === 'cancelled') {
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what} failed: ${status['error-desc'] ?? status.status}`);
    }
    if (Date.now() > deadline) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what} did not finish within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Save-socket folders without a CELL_HOME of their own (the backend used on its own). */
export const DEFAULT_SAVE_DIR_PREFIX = '/tmp/cell-mig-';

/**
 * A one-connection listener in a fresh folder under /tmp (QEMU's user cannot reach the machine's
 * 0700 folder): the folder is 0711 (passable, not listable) and the socket 0600, owned by `peer`.
 * Its name starts with `prefix`, which says whose it is: a celld killed mid-save leaves it, and
 * the next celld of the same CELL_HOME sweeps it.
 */
async function saveListener(peer: SocketPeer | undefined, prefix: string): Promise<{ path: string; server: Server; dispose: () => Promise<void> }> {
  const dir = await mkdtemp(prefix);
  const path = join(dir, 'save.sock');
  const server = createServer({ allowHalfOpen: false });
  const dispose = async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    await chmod(path, 0o600);
    if (peer) {
      await chown(path, peer.uid, peer.gid);
      await chmod(dir, 0o711);
    }
    return { path, server, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}

/** Writes the first connection's bytes to `statePath` and fsyncs it; resolves with the byte count. */
function receiveInto(server: Server, statePath: string): { done: Promise<number>; abort: (err: Error) => void } {
  let abort: (err: Error) => void = () => {};
  const done = new Promise<number>((resolve, reject) => {
    abort = reject;
    server.once('connection', (socket: Socket) => {
      server.close(); // one connection: QEMU's
      void (async () => {
        const file = await open(statePath, 'w', 0o600);
        let bytes = 0;
        try {
          for await (const chunk of socket as AsyncIterable<Buffer>) {
            let off = 0;
            while (off < chunk.length) off += (await file.write(chunk, off)).bytesWritten;
            bytes += chunk.length;
          }
          await file.sync();
        } finally {
          await file.close();
        }
        return bytes;
      })().then(resolve, (err: unknown) => {
        socket.destroy();
        reject(err as Error);
      });
    });
  });
  done.catch(() => {}); // observed by the caller; never an unhandled rejection
  return { done, abort: (err) => abort(err) };
}

/**
 * Saves a paused guest's device state (and its RAM, unless the RAM is a shared file that
 * `ignoreShared` leaves out) to `statePath`. Done when QEMU says the migration completed and the
 * stream has ended and reached the disk. The bandwidth cap is lifted: the default 128 MiB/s
 * would make a full-RAM save of a 256 MiB guest take seconds.
 */
export async function saveState(
  qmp: QmpClient,
  statePath: string,
  opts: { ignoreShared: boolean; peer?: SocketPeer; timeoutMs?: number; socketDirPrefix?: string },
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  await setIgnoreShared(qmp, opts.ignoreShared);
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
  const listener = await saveListener(opts.peer, opts.socketDirPrefix ?? DEFAULT_SAVE_DIR_PREFIX);
  const received = receiveInto(listener.server, statePath);
  try {
    await qmp.execute('migrate', { uri: `unix:${listener.path}` });
    await waitMigration(qmp, 'saving the VM state', deadline, timeoutMs).catch(async (err: unknown) => {
      // If our end failed first (a full disk), QEMU only saw the connection drop: say ours.
      const ours = await Promise.race([received.done.then(() => undefined, (e: unknown) => e), new Promise((r) => setTimeout(r, 50, undefined))]);
      received.abort(err as Error);
      throw ours ?? err;
    });
    // QEMU closes its end once the stream is complete; the file is fsynced before this resolves.
    const timer = setTimeout(() => received.abort(new CellError(ErrorCodes.SNAPSHOT_FAILED, 'saving the VM state: the stream did not end')), Math.max(1000, deadline - Date.now()));
    try {
      await received.done;
    } finally {
      clearTimeout(timer);
    }
  } catch (err) {
    await rm(statePath, { force: true }).catch(() => {});
    throw err instanceof CellError ? err : new CellError(ErrorCodes.SNAPSHOT_FAILED, `saving the VM state failed: ${(err as Error).message}`);
  } finally {
    await listener.dispose();
  }
}

/** Streams `statePath` into QEMU's incoming socket; resolves once the whole file was handed over. */
function sendFile(socketPath: string, statePath: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const socket = createConnection(socketPath);
    const file = createReadStream(statePath);
    const fail = (err: Error) => {
      file.destroy();
      socket.destroy();
      reject(err);
    };
    socket.once('error', fail);
    file.once('error', fail);
    socket.once('connect', () => {
      file.pipe(socket);
      socket.once('finish', () => resolve());
    });
  });
}

/**
 * Loads state saved by `saveState` into a QEMU started with `-incoming unix:SOCKET -S` and the
 * same devices. Resolves with the guest paused; the caller resumes it with `cont`. A corrupt or
 * truncated state file makes QEMU fail the load (and exit): the error says so.
 */
export async function restoreState(
  qmp: QmpClient,
  statePath: string,
  opts: { incomingSocket: string; ignoreShared: boolean; timeoutMs?: number },
): Promise<void> {
  // Before the stream starts: the capability must match the one the state was saved with.
  await setIgnoreShared(qmp, opts.ignoreShared);
  const sent = sendFile(opts.incomingSocket, statePath);
  sent.catch(() => {});
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  try {
    // QEMU's answer, not the stream, decides: a state it rejects may close the socket early.
    await sent.catch(() => {});
    for (;;) {
      const { status } = await qmp.execute<{ status: string }>('query-status').catch((err: unknown) => {
        throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `restoring the VM state failed: QEMU rejected the state file (${(err as Error).message})`);
      });
      if (status !== 'inmigrate') {
        if (status === 'paused' || status === 'prelaunch' || status === 'running') return;
        throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `restoring the VM state failed: the guest ended in state "${status}"`);
      }
      if (Date.now() > deadline) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, 'restoring the VM state took too long');
      await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    await rm(opts.incomingSocket, { force: true }).catch(() => {});
  }
}
