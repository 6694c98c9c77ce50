import { EventEmitter } from 'node:events';
import type { Db } from './database.js';
import type { CellEvent, NewEvent } from '../domain/events.js';

interface EventRow {
  seq: number;
  time: string;
  type: string;
  action: string;
  actor_id: string;
  actor_name: string;
  labels: string | null;
  attributes: string;
}

/** How many events are kept: older ones are dropped as new ones come (Docker keeps fewer, in memory). */
export const EVENTS_KEPT = 10_000;

function fromRow(r: EventRow): CellEvent {
  return {
    seq: r.seq,
    time: r.time,
    type: r.type as CellEvent['type'],
    action: r.action,
    actor: { id: r.actor_id, name: r.actor_name, ...(r.labels ? { labels: JSON.parse(r.labels) as Record<string, string> } : {}) },
    attributes: JSON.parse(r.attributes) as Record<string, string>,
  };
}

/**
 * The event log, in SQLite so that an event is written in the same transaction as the change it
 * reports (a kill -9 never leaves one without the other) and `cell events --since` reaches back
 * across celld restarts. Followers are told `recorded` and read what is new by `seq`, so an event
 * of a transaction that rolled back is never seen.
 */
export class EventStore extends EventEmitter {
  private sinceTrim = 0;

  constructor(
    private readonly db: Db,
    private readonly kept = EVENTS_KEPT,
  ) {
    super();
    this.setMaxListeners(0);
  }

  record(event: NewEvent): void {
    this.db
      .prepare('INSERT INTO events (time, type, action, actor_id, actor_name, labels, attributes) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(new Date().toISOString(), event.type, event.action, event.actor.id, event.actor.name, event.actor.labels ? JSON.stringify(event.actor.labels) : null, JSON.stringify(event.attributes));
    if (++this.sinceTrim >= 100) {
      this.sinceTrim = 0;
      this.db.prepare('DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?').run(this.kept);
    }
    // After the caller's transaction has committed (better-sqlite3 transactions are synchronous).
    queueMicrotask(() => this.emit('recorded'));
  }

  /** Events after `seq`, oldest first, at most `limit`. */
  after(seq: number, limit = 500): CellEvent[] {
    return (this.db.prepare('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?').all(seq, limit) as EventRow[]).map(fromRow);
  }

  /** The `seq` just before the first event at or after `time` (a cursor for `after`). */
  seqBefore(time: string): number {
    const row = this.db.prepare('SELECT MIN(seq) AS seq FROM events WHERE time >= ?').get(time) as { seq: number | null };
    return row.seq === null ? this.lastSeq() : row.seq - 1;
  }

  lastSeq(): number {
    return (this.db.prepare('SELECT COALESCE(MAX(seq), 0) AS seq FROM events').get() as { seq: number }).seq;
  }
}
