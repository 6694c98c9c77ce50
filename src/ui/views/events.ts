import { Api } from '../../api/routes.js';
import type { CellEventBody } from '../../api/events.js';
import type { Ctx } from '../context.js';
import { fill, h } from '../dom.js';

const KEPT = 200;
/** Events of the last quarter hour first, so the panel is not empty on arrival. */
const HISTORY_MS = 15 * 60 * 1000;

/** The live event feed beside every view; each event is also handed to the view (to refresh). */
export function eventsPanel(root: HTMLElement, ctx: Ctx, onEvent: (event: CellEventBody) => void): () => void {
  const list = h('ol', { class: 'events', reversed: true });
  const state = h('span', { class: 'muted' }, 'connecting');
  fill(root, h('h2', {}, 'Events ', state), list);
  const abort = new AbortController();
  let since = new Date(Date.now() - HISTORY_MS).toISOString();
  const run = async () => {
    while (!abort.signal.aborted) {
      try {
        fill(state, 'live');
        await ctx.client.stream(Api.events.stream, { query: { since } }, ({ event }) => {
          since = new Date(Date.parse(event.time) + 1).toISOString();
          list.prepend(
            h(
              'li',
              { 'data-action': event.action },
              h('time', { datetime: event.time }, new Date(event.time).toLocaleTimeString()),
              ' ',
              h('b', {}, `${event.type} ${event.action}`),
              ' ',
              event.actor.name || event.actor.id.slice(0, 12),
            ),
          );
          while (list.children.length > KEPT) list.lastElementChild!.remove();
          onEvent(event);
        }, abort.signal);
      } catch {
        if (abort.signal.aborted) return;
      }
      // celld restarted or the network blinked: try again shortly.
      fill(state, 'reconnecting');
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void run();
  return () => abort.abort();
}
