import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { hostCreds, identifyCaller, mayUseCelld, type Caller } from '../engine/callers.js';
import { CELLD_HOST_FS, hostFsFor, type HostFs } from '../engine/host-fs.js';

/**
 * Who each request comes from, checked once per connection: a caller who may not use celld
 * (docs/security.md, "Who may use celld") is refused; the others' host paths are reached with
 * their own file access (engine/host-fs.ts).
 */
const HOST_FS = Symbol('hostFs');
type WithHostFs = FastifyRequest & { [HOST_FS]?: HostFs };

export function checkCallers(app: FastifyInstance, socketGroup: number | null): void {
  const known = new WeakMap<Socket, Caller | null | 'unknown'>();
  app.addHook('onRequest', async (req) => {
    const socket = req.raw.socket;
    let caller = known.get(socket);
    if (caller === undefined) {
      // Node keeps a unix socket's descriptor on its handle; a request made in-process (tests) has no handle.
      const handle = (socket as unknown as { _handle?: { fd?: number } | null })._handle;
      const fd = handle?.fd;
      caller = handle === undefined ? null : typeof fd === 'number' ? identifyCaller(fd) : null;
      // Fail closed: a connection whose caller cannot be told gets nothing (with the addon there, a
      // real socket always has one). Without the addon the socket is celld's user's alone (main.ts).
      if (caller === null && handle !== undefined && hostCreds()) caller = 'unknown';
      known.set(socket, caller);
    }
    if (caller === 'unknown') throw new CellError(ErrorCodes.PERMISSION_DENIED, 'celld cannot tell who is calling (no peer credentials on this connection)');
    if (caller && !mayUseCelld(caller, socketGroup)) {
      throw new CellError(ErrorCodes.PERMISSION_DENIED, `uid ${caller.uid} may not use celld: it is for root and the members of its socket's group`);
    }
    (req as WithHostFs)[HOST_FS] = hostFsFor(caller);
  });
}

/** Sets the host file access a request's routes use (the TCP listener's: none). */
export function setHostFs(req: FastifyRequest, hostFs: HostFs): void {
  (req as WithHostFs)[HOST_FS] = hostFs;
}

/** The host file access of a request's caller (celld's own where no caller is known). */
export function hostFsOf(req: FastifyRequest): HostFs {
  return (req as WithHostFs)[HOST_FS] ?? CELLD_HOST_FS;
}
