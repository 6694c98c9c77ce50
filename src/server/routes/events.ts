import type { FastifyInstance } from 'fastify';
import { Api } from '../../api/routes.js';
import { parseEventFilters } from '../../domain/events.js';
import type { Engine } from '../../engine/engine.js';
import { openStream } from '../ndjson.js';
import { serve } from '../serve-route.js';

const { events } = Api;

/** `cell events`: the event log, then live events, one per line. */
export function eventRoutes(app: FastifyInstance, engine: Engine): void {
  serve(app, events.stream, async (req, reply) => {
    const filter = parseEventFilters(req.query.filter ?? []);
    const at = (iso: string | undefined) => (iso === undefined ? undefined : new Date(iso));
    const stream = openStream(events.stream, req, reply);
    try {
      for await (const event of engine.events.read({ since: at(req.query.since), until: at(req.query.until), filter }, stream.signal)) {
        stream.send({ type: 'event', event });
        // A reader that falls behind holds the feed back; the log keeps what it has not read.
        await stream.behind();
      }
      stream.end();
    } catch (err) {
      stream.fail(err);
    }
  });
}
