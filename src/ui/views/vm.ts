import { Api } from '../../api/routes.js';
import type { Vm } from '../../api/vms.js';
import { debounce, type View } from '../context.js';
import { fill, formatAgo, h, shortId } from '../dom.js';
import { openTerminal } from './terminal.js';
import { vmActions } from './vm-actions.js';

/** Log lines kept on the page (the rest: `cell logs`). */
const LOG_LINES = 2000;

/** One VM: what it is, its live logs, and a terminal in it. */
export const vmView: View = (root, ctx, ref) => {
  const abort = new AbortController();
  const title = h('h1', {});
  const actions = h('div', {});
  const details = h('dl', { class: 'details' });
  const logs = h('pre', { class: 'logs', 'aria-label': 'logs' });
  const termHost = h('div', { class: 'terminal', id: 'terminal' });
  const termButton = h('button', { id: 'open-terminal', onclick: () => startTerminal() }, 'Open terminal');
  const termState = h('span', { class: 'muted' });
  fill(
    root,
    h('p', {}, h('a', { href: '#/vms' }, '< VMs')),
    title,
    actions,
    details,
    h('section', {}, h('h2', {}, 'Terminal ', termButton, ' ', termState), termHost),
    h('section', {}, h('h2', {}, 'Logs'), logs),
  );
  let vm: Vm | undefined;

  // The terminal on screen; `ended` once its shell is gone (its last screen stays until the next one).
  let term: { close: () => void; ended: boolean } | undefined;
  const startTerminal = () => {
    if (!vm || (term && !term.ended)) return;
    term?.close();
    termHost.replaceChildren();
    termButton.disabled = true;
    fill(termState, 'connected');
    const current = { close: () => {}, ended: false };
    term = current;
    current.close = openTerminal(termHost, ctx, vm.id, (message) => {
      current.ended = true;
      if (term !== current) return;
      fill(termState, message);
      termButton.disabled = vm?.state !== 'running';
    });
  };

  const draw = (v: Vm) => {
    vm = v;
    fill(title, v.name, ' ', h('span', { class: `state ${v.state}` }, v.state));
    fill(actions, vmActions(ctx, v, refresh));
    const row = (k: string, value: string | Node) => [h('dt', {}, k), h('dd', {}, value)];
    const addresses = v.network?.networks.map((n) => `${n.address} (${n.name})`).join(', ');
    const ports = v.network?.ports.map((p) => `${p.hostIp}:${p.hostPort} -> ${p.guestPort}/${p.protocol}`).join(', ');
    fill(
      details,
      row('ID', h('span', { class: 'mono' }, v.id)),
      row('From', v.baseSnapshot ? `snapshot ${shortId(v.baseSnapshot)}` : v.spec.image),
      row('Command', v.spec.cmd.join(' ') || '-'),
      row('CPUs / memory', `${v.spec.cpus} / ${v.spec.memoryMib} MiB`),
      row('Created', `${new Date(v.createdAt).toLocaleString()} (${formatAgo(v.createdAt)})`),
      row('Health', v.health ? `${v.health.status} (${v.health.failingStreak} failing)` : '-'),
      row('Network', addresses || '-'),
      row('Ports', ports || '-'),
      row('Labels', Object.entries(v.spec.labels ?? {}).map(([k, val]) => `${k}=${val}`).join(', ') || '-'),
      row('Exit', v.exit ? JSON.stringify(v.exit) : '-'),
    );
    termButton.disabled = v.state !== 'running' || (term !== undefined && !term.ended);
  };

  const load = async () => {
    try {
      draw(await ctx.client.call(Api.vms.get, { params: { ref: ref! } }));
    } catch (err) {
      fill(title, `VM ${ref}`);
      ctx.notify(`VM ${ref}: ${(err as Error).message}`, 'error');
    }
  };
  const refresh = debounce(() => void load(), 150);

  // Lines are added once per frame, however fast a guest writes them; the view follows the end
  // unless the reader scrolled up.
  let pending: HTMLElement[] = [];
  const flush = () => {
    const following = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
    logs.append(...pending.splice(0).slice(-LOG_LINES));
    while (logs.childNodes.length > LOG_LINES) logs.firstChild!.remove();
    if (following) logs.scrollTop = logs.scrollHeight;
  };
  const followLogs = async () => {
    await ctx.client
      .stream(Api.vms.logs, { params: { ref: ref! }, query: { follow: true, tail: 200 } }, ({ text, stream }) => {
        if (pending.length === 0) requestAnimationFrame(flush);
        pending.push(h('span', { class: stream }, text.endsWith('\n') ? text : `${text}\n`));
        if (pending.length > LOG_LINES) pending = pending.slice(-LOG_LINES);
      }, abort.signal)
      .catch((err: Error) => {
        if (!abort.signal.aborted) logs.append(h('span', { class: 'muted' }, `[logs: ${err.message}]\n`));
      });
  };

  const unsubscribe = ctx.onEvent((e) => {
    if (e.type === 'vm' && (e.actor.id === vm?.id || e.actor.name === ref)) refresh();
  });
  void load().then(followLogs);
  return () => {
    abort.abort();
    unsubscribe();
    term?.close();
  };
};
