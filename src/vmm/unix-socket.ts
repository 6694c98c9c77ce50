import { connect, type Socket } from 'node:net';
import { CellError, ErrorCodes } from '../domain/errors.js';

/** Connects to a unix socket that a starting machine may not have created yet (QMP, the agent's port). */
export async function connectWithRetry(path: string, timeoutMs: number, intervalMs = 5): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = connect(path);
        socket.once('connect', () => {
          socket.removeAllListeners('error');
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) {
        throw new CellError(ErrorCodes.BOOT_FAILED, `cannot connect to ${path}: ${(err as Error).message}`);
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }
}
