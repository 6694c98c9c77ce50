import type { CellEventBody } from '../api/events.js';
import { Api } from '../api/routes.js';
import type { Client } from './api.js';

/** What every view gets from the page: the API, a place to say what happened, and live events. */
export interface Ctx {
  client: Client;
  /** A one-line message at the top of the page (`error`: celld refused, with its message). */
  notify(message: string, kind?: 'info' | 'error'): void;
  /** Called with each live event (VMs and snapshots made, started, stopped, removed); returns the unsubscribe. */
  onEvent(listener: (event: CellEventBody) => void): () => void;
  /** Navigates (hash routes: #/vms, #/vms/ID, #/snapshots, #/resources). */
  go(hash: string): void;
}

/** A view draws into `root` and returns what ends its streams and timers when the page moves on. */
export type View = (root: HTMLElement, ctx: Ctx, arg?: string) => () => void;

/** Runs `fn` once after a burst of calls settles (many events, one refresh). */
export function debounce(fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

/**
 * Runs an action, telling the user how it went: what the action answers when it is a string (what
 * it made), else "done"; errors carry celld's one-line message.
 */
export async function act(ctx: Ctx, what: string, fn: () => Promise<unknown>): Promise<void> {
  try {
    ctx.notify(`${what}...`);
    const result = await fn();
    ctx.notify(typeof result === 'string' ? result : `${what}: done`);
  } catch (err) {
    ctx.notify(`${what}: ${(err as Error).message}`, 'error');
  }
}

/**
 * Forks a snapshot as many times as `count` says (1-100), then names the forks. `snapshot` gives
 * the snapshot's id (a VM's Fork button takes one first).
 */
export function forkFrom(ctx: Ctx, label: string, count: HTMLInputElement, snapshot: () => Promise<string>): Promise<void> {
  const n = Math.max(1, Math.min(100, Number(count.value) || 1));
  return act(ctx, `forking ${label} x${n}`, async () => {
    const forks = await ctx.client.call(Api.snapshots.fork, { params: { ref: await snapshot() }, body: { count: n } });
    return `forked ${label}: ${forks.map((f) => f.name).join(', ')}`;
  });
}
