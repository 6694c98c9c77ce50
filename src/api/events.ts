import { Type, type Static } from '@sinclair/typebox';
import { ndjson, route } from './contract.js';
import { event } from './common.js';

/** `cell events`: what happens to VMs and snapshots, as a stream (domain/events.ts). */

export const EventsQuery = Type.Object({
  /** Events at or after this time (RFC 3339); absent: only new ones. */
  since: Type.Optional(Type.String({ format: 'date-time' })),
  /** End the stream at this time; with `since` in the past, a finite report. */
  until: Type.Optional(Type.String({ format: 'date-time' })),
  /** `vm=NAME|ID`, `snapshot=NAME|ID`, `type=vm|snapshot`, `event=ACTION`, `label=K[=V]`; repeatable. */
  filter: Type.Optional(Type.Array(Type.String())),
});

export const CellEvent = Type.Object({
  seq: Type.Integer(),
  time: Type.String(),
  type: Type.Union([Type.Literal('vm'), Type.Literal('snapshot')]),
  action: Type.String(),
  actor: Type.Object({ id: Type.String(), name: Type.String(), labels: Type.Optional(Type.Record(Type.String(), Type.String())) }),
  attributes: Type.Record(Type.String(), Type.String()),
});
export type CellEventBody = Static<typeof CellEvent>;

export const EventEvent = event('event', { event: CellEvent });

export const events = {
  stream: route({
    method: 'GET',
    path: '/v1/events',
    summary: 'VM and snapshot events (create, start, pause, unpause, stop, die, snapshot, health_status, update, destroy; snapshot create, fork, delete): kept ones from ?since=, then live until ?until= or the client leaves',
    query: EventsQuery,
    reply: ndjson(EventEvent),
  }),
};
