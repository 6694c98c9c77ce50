import type { CellEvent, EventFilter } from '../domain/events.js';
import { matchesEvent } from '../domain/events.js';
import type { EventStore } from '../store/event-store.js';

export interface EventReadOptions {
  /** Events at or after this time; absent: only new ones (with `until`: everything kept). */
  since?: Date;
  /** Stop at this time (and do not wait for events after it). */
  until?: Date;
  filter: EventFilter;
}

/**
 * `cell events`: what is kept from `since` on, then new events as they are recorded, until `until`
 * or the caller goes away. Reads the store by `seq`, so a follower that falls behind loses nothing
 * that is still kept and memory stays at one batch.
 */
export class EventFeed {
  constructor(private readonly store: EventStore) {}

  async *read(opts: EventReadOptions, signal?: AbortSignal): AsyncGenerator<CellEvent> {
    const until = opts.until?.toISOString();
    let cursor = opts.since ? this.store.seqBefore(opts.since.toISOString()) : opts.until ? 0 : this.store.lastSeq();
    let wake: (() => void) | null = null;
    const poke = () => wake?.();
    this.store.on('recorded', poke);
    signal?.addEventListener('abort', poke);
    // An `until` in the future ends the stream then, even if nothing happens.
    const timer = until ? setTimeout(poke, Math.max(0, Date.parse(until) - Date.now())) : undefined;
    try {
      for (;;) {
        const woken = new Promise<void>((resolve) => (wake = resolve));
        const batch = this.store.after(cursor);
        for (const event of batch) {
          if (until && event.time >= until) return;
          cursor = event.seq;
          if (matchesEvent(event, opts.filter)) yield event;
        }
        if (signal?.aborted || (until && new Date().toISOString() >= until)) return;
        if (batch.length > 0) continue;
        await woken;
      }
    } finally {
      clearTimeout(timer);
      this.store.off('recorded', poke);
      signal?.removeEventListener('abort', poke);
    }
  }
}
