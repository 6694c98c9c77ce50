import { Api } from '../api/routes.js';
import type { CellEventBody } from '../api/events.js';
import { ApiError, Client } from './api.js';
import type { Ctx, View } from './context.js';
import { fill, h } from './dom.js';
import { eventsPanel } from './views/events.js';
import { resourcesView } from './views/resources.js';
import { treeView } from './views/tree.js';
import { vmView } from './views/vm.js';
import { vmsView } from './views/vms.js';

const TOKEN_KEY = 'cellvm.token';
const app = document.getElementById('app')!;

/** The token: from the link `cell ui` prints (#token=..., taken out of the address at once), or this tab's session. */
function takeToken(): string | null {
  const m = /^#token=([A-Za-z0-9_-]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]!);
    history.replaceState(null, '', `${location.pathname}#/vms`);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function signOut(message?: string): void {
  sessionStorage.removeItem(TOKEN_KEY);
  stopAll?.();
  stopAll = undefined;
  showLogin(message);
}

function showLogin(message?: string): void {
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', placeholder: 'cell_...', required: true });
  const error = h('p', { class: 'error', role: 'alert' }, message ?? '');
  const form = h(
    'form',
    {
      class: 'login',
      onsubmit: (e: Event) => {
        e.preventDefault();
        const token = input.value.trim();
        const client = new Client(token, () => {});
        client.call(Api.system.ping).then(
          () => {
            sessionStorage.setItem(TOKEN_KEY, token);
            start(token);
          },
          (err: unknown) => fill(error, err instanceof ApiError ? err.message : String(err)),
        );
      },
    },
    h('h1', {}, 'cellvm'),
    h('label', { for: 'token' }, 'API token'),
    input,
    h('button', { type: 'submit' }, 'Sign in'),
    error,
    h('p', { class: 'hint' }, 'Make one on the host with ', h('code', {}, 'cell token create --name me --scope write'), ', or open the link ', h('code', {}, 'cell ui'), ' prints.'),
  );
  fill(app, form);
  input.focus();
}

const ROUTES: { pattern: RegExp; view: View }[] = [
  { pattern: /^#\/vms\/([^/]+)$/, view: vmView },
  { pattern: /^#\/snapshots$/, view: treeView },
  { pattern: /^#\/resources$/, view: resourcesView },
  { pattern: /^#\/vms$/, view: vmsView },
];

let stopAll: (() => void) | undefined;

function start(token: string): void {
  stopAll?.();
  const listeners = new Set<(event: CellEventBody) => void>();
  const status = h('div', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const ctx: Ctx = {
    client: new Client(token, (message) => signOut(message)),
    notify(message, kind = 'info') {
      status.className = `status ${kind}`;
      fill(status, message);
    },
    onEvent(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    go(hash) {
      location.hash = hash;
    },
  };
  const nav = h(
    'nav',
    {},
    h('a', { href: '#/vms', 'data-nav': 'vms' }, 'VMs'),
    h('a', { href: '#/snapshots', 'data-nav': 'snapshots' }, 'Snapshot tree'),
    h('a', { href: '#/resources', 'data-nav': 'resources' }, 'Images, volumes, networks, cache'),
  );
  const main = h('main', { id: 'view' });
  const events = h('aside', { id: 'events' });
  fill(
    app,
    h('header', {}, h('span', { class: 'brand' }, 'cellvm'), nav, status, h('button', { class: 'link', onclick: () => signOut() }, 'Sign out')),
    h('div', { class: 'layout' }, main, events),
  );
  const stopEvents = eventsPanel(events, ctx, (event) => listeners.forEach((l) => l(event)));
  let stopView: (() => void) | undefined;
  const route = () => {
    stopView?.();
    const hash = location.hash || '#/vms';
    const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(hash) })).find((x) => x.m);
    for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')!));
    main.replaceChildren();
    if (!match) return ctx.go('#/vms');
    let arg: string | undefined;
    try {
      arg = match.m![1] ? decodeURIComponent(match.m![1]) : undefined;
    } catch {
      return ctx.go('#/vms'); // a hand-typed address with a stray %
    }
    stopView = match.r.view(main, ctx, arg);
  };
  window.addEventListener('hashchange', route);
  stopAll = () => {
    window.removeEventListener('hashchange', route);
    stopView?.();
    stopEvents();
  };
  route();
}

const token = takeToken();
if (token) start(token);
else showLogin();

// A `cell ui` link opened in a tab that already shows the page changes only the fragment.
window.addEventListener('hashchange', () => {
  if (!location.hash.startsWith('#token=')) return;
  const fresh = takeToken();
  if (fresh) start(fresh);
});
