import { join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { MachineFiles } from '../backend.js';

// sun_path holds 108 bytes with the NUL; refuse early rather than let QEMU fail obscurely.
const MAX_SOCKET_PATH = 107;

/**
 * Where a machine started `incoming` listens for its state (`-incoming unix:PATH`): QEMU makes
 * the socket at start-up, before it drops its privileges, in the machine's own folder.
 */
export function incomingSocketPath(dir: string): string {
  return checkSocketPath(join(dir, 'incoming.sock'));
}

function checkSocketPath(socket: string): string {
  if (Buffer.byteLength(socket) > MAX_SOCKET_PATH) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, `CELL_HOME is too deep: the socket path ${socket} is longer than ${MAX_SOCKET_PATH} bytes`);
  }
  return socket;
}

export function machineFiles(dir: string): MachineFiles {
  const files: MachineFiles = {
    overlay: join(dir, 'disk.qcow2'),
    dataOverlay: join(dir, 'data.qcow2'),
    qmpSocket: join(dir, 'qmp.sock'),
    agentSocket: join(dir, 'agent.sock'),
    consoleSocket: join(dir, 'console.sock'),
    serialLog: join(dir, 'serial.log'),
    qemuLog: join(dir, 'qemu.log'),
    pidFile: join(dir, 'qemu.pid'),
  };
  for (const socket of [files.qmpSocket, files.agentSocket, files.consoleSocket]) checkSocketPath(socket);
  incomingSocketPath(dir);
  return files;
}
