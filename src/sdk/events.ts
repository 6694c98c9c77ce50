import type { CellEventBody } from '../api/events.js';
import { Api } from '../api/routes.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { events } = Api;

export type CellEvent = CellEventBody;

export interface EventsOptions extends RequestOptions {
  /** Events kept from this time on first; absent: only new ones. */
  since?: Date;
  /** The iterator ends at this time. */
  until?: Date;
  /** Docker's filters: `vm=NAME`, `snapshot=NAME`, `type=vm`, `event=die`, `label=team=ml`; values of one key are alternatives, keys must all match. */
  filters?: string[];
}

/** What happens to VMs and snapshots, as `docker events` reports it. */
export class EventsClient {
  constructor(private readonly transport: Transport) {}

  /**
   * Events as they happen (after the kept ones from `since`), until `until` or `signal` aborts:
   *
   *   for await (const e of client.events.stream({ filters: ['vm=web'] })) if (e.action === 'die') break;
   */
  async *stream(opts: EventsOptions = {}): AsyncGenerator<CellEvent> {
    const query = { since: opts.since?.toISOString(), until: opts.until?.toISOString(), filter: opts.filters };
    for await (const line of this.transport.stream(events.stream, { query }, opts)) yield line.event;
  }
}
