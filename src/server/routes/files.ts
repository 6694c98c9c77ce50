import { hostFsOf } from '../caller-access.js';
import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import type { Engine } from '../../engine/engine.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import { drained, openStream } from '../ndjson.js';
import { serve } from '../serve-route.js';

const { files } = Api;

/**
 * Files of a running VM: stat, read (an ndjson stream of base64 `data` events, then `end`), write
 * (a raw request body), and `cell cp` both ways between the VM and paths on celld's host.
 */
export function fileRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, files.stat, async (req) => engine.vms.statGuestPath(req.params.ref, req.query.path, req.query.follow ?? false));

  serve(app, files.read, async (req, reply) => {
    const { path, maxBytes = 0 } = req.query;
    // Checked before the stream opens, so a missing file or a stopped VM is a plain HTTP error.
    const st = await engine.vms.statGuestPath(req.params.ref, path, true);
    if (st.kind !== 'file') throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path} is a ${st.kind}, not a regular file`);
    if (maxBytes > 0 && st.size > maxBytes) {
      throw new CellError(ErrorCodes.SIZE_LIMIT, `${path} is ${st.size} bytes, over the limit of ${maxBytes}`);
    }
    const stream = openStream(files.read, req, reply);
    try {
      let size = 0;
      for await (const chunk of engine.vms.readGuestFile(req.params.ref, path, maxBytes)) {
        stream.send({ type: 'data', data: chunk.toString('base64') });
        size += chunk.length;
        // A slow client holds the guest back instead of growing celld's buffers.
        if (reply.raw.writableNeedDrain) await drained(reply.raw);
        if (stream.signal.aborted) return; // leaving the loop cancels the read in the guest
      }
      stream.send({ type: 'end', size });
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });

  // The body is the file's bytes (application/octet-stream), streamed to the guest as it arrives.
  serve(app, files.write, async (req) => {
    const { path, mode = 0o644, uid, gid } = req.query;
    const body = req.body as NodeJS.ReadableStream | undefined;
    if (body !== undefined && !(typeof body === 'object' && 'pipe' in body)) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'send the file as the request body with content-type application/octet-stream');
    }
    const source = (body as AsyncIterable<Buffer> | undefined) ?? emptyBody();
    const bytes = await engine.vms.writeGuestFile(req.params.ref, path, { mode, uid, gid }, source);
    return { path, bytes };
  });

  serve(app, files.copyIn, async (req) => engine.vms.copyIn(req.params.ref, req.body.hostPath, req.body.guestPath, hostFsOf(req)));

  serve(app, files.copyOut, async (req) => {
    const { guestPath, hostPath, uid, gid } = req.body;
    if ((uid === undefined) !== (gid === undefined)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'give both uid and gid, or neither');
    return engine.vms.copyOut(req.params.ref, guestPath, hostPath, uid !== undefined && gid !== undefined ? { uid, gid } : undefined, hostFsOf(req));
  });
}

async function* emptyBody(): AsyncGenerator<Buffer> {}

