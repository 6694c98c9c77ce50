import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { identifyCaller, mayUseCelld, type Caller } from '../engine/callers.js';
import { CELLD_HOST_FS, hostFsFor, type HostFs } from '../engine/host-fs.js';

/**
 * Who each request comes from, checked once per connection: a caller who may not use celld
 * (docs/security.md, "Who may use celld") is refused; the others' host paths are reached with
 * their own file access (engine/host-fs.ts).
 */
const HOST_FS = Symbol('hostFs');
type WithHostFs = FastifyRequest & { [HOST_FS]?: HostFs };

export function checkCallers(app: FastifyInstance, socketGroup: number | null): void {
  const known = new WeakMap<Socket, Caller | null>();
  app.addHook('onRequest', async (req) => {
    const socket = req.raw.socket;
    let caller = known.get(socket);
    if (caller === undefined) {
      // Node keeps a unix socket's descriptor on its handle; a request made in-process (tests) has none.
      const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
      caller = typeof fd === 'number' ? identifyCaller(fd) : null;
      known.set(socket, caller);
    }
    if (caller && !mayUseCelld(caller, socketGroup)) {
      throw new CellError(ErrorCodes.PERMISSION_DENIED, `uid ${caller.uid} may not use celld: it is for root and the members of its socket's group`);
    }
    (req as WithHostFs)[HOST_FS] = hostFsFor(caller);
  });
}

/** The host file access of a request's caller (celld's own where no caller is known). */
export function hostFsOf(req: FastifyRequest): HostFs {
  return (req as WithHostFs)[HOST_FS] ?? CELLD_HOST_FS;
}
