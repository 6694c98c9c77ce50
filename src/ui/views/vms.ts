import { Api } from '../../api/routes.js';
import type { Vm } from '../../api/vms.js';
import { debounce, type View } from '../context.js';
import { fill, formatAgo, formatBytes, h, shortId, sparkline } from '../dom.js';
import { vmActions } from './vm-actions.js';

/** Samples kept per VM for the sparklines: two minutes at one a second. */
const HISTORY = 120;

interface History {
  cpu: number[];
  mem: number[];
  guestBytes: number;
}

/** Every VM with its state, health, labels, CPU and memory over the last minutes, and actions. */
export const vmsView: View = (root, ctx) => {
  const abort = new AbortController();
  const histories = new Map<string, History>();
  const body = h('tbody');
  const count = h('span', { class: 'muted' });
  fill(
    root,
    h('h1', {}, 'VMs ', count),
    h(
      'table',
      { class: 'vms' },
      h('thead', {}, h('tr', {}, ['Name', 'State', 'Health', 'Labels', 'From', 'CPU', 'Memory', 'Created', ''].map((t) => h('th', {}, t)))),
      body,
    ),
  );
  const cells = new Map<string, { cpu: HTMLElement; mem: HTMLElement }>();

  const drawStats = (id: string) => {
    const c = cells.get(id);
    const hist = histories.get(id);
    if (!c || !hist) return;
    const cpu = hist.cpu.at(-1) ?? 0;
    const mem = hist.mem.at(-1) ?? 0;
    fill(c.cpu, sparkline(hist.cpu, 100, 'CPU'), h('span', { class: 'num' }, `${cpu.toFixed(0)}%`));
    fill(c.mem, sparkline(hist.mem, hist.guestBytes, 'memory'), h('span', { class: 'num' }, formatBytes(mem)));
  };

  const draw = (vms: Vm[]) => {
    cells.clear();
    fill(count, `(${vms.length})`);
    fill(
      body,
      vms.length === 0 ? h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No VMs. Start one: cell run -d busybox -- sleep 1d')) : null,
      vms.map((vm) => {
        const cpu = h('td', { class: 'stat' });
        const mem = h('td', { class: 'stat' });
        cells.set(vm.id, { cpu, mem });
        const labels = Object.entries(vm.spec.labels ?? {}).map(([k, v]) => h('span', { class: 'label' }, v ? `${k}=${v}` : k));
        return h(
          'tr',
          { 'data-vm': vm.name },
          h('td', {}, h('a', { href: `#/vms/${encodeURIComponent(vm.id)}` }, vm.name), h('div', { class: 'muted mono' }, shortId(vm.id))),
          h('td', {}, h('span', { class: `state ${vm.state}` }, vm.state)),
          h('td', {}, vm.health ? h('span', { class: `health ${vm.health.status}` }, vm.health.status) : h('span', { class: 'muted' }, '-')),
          h('td', {}, labels),
          h('td', { class: 'mono' }, vm.baseSnapshot ? `snapshot ${shortId(vm.baseSnapshot)}` : vm.spec.image),
          cpu,
          mem,
          h('td', {}, formatAgo(vm.createdAt)),
          h('td', {}, vmActions(ctx, vm, refresh)),
        );
      }),
    );
    for (const vm of vms) drawStats(vm.id);
    for (const id of histories.keys()) if (!cells.has(id)) histories.delete(id);
  };

  const load = async () => {
    try {
      draw(await ctx.client.call(Api.vms.list, { query: { all: true } }));
    } catch (err) {
      ctx.notify(`VMs: ${(err as Error).message}`, 'error');
    }
  };
  const refresh = debounce(() => void load(), 150);

  // One stream of every running VM's stats (a stream per VM would run out of the browser's six connections).
  const stats = async () => {
    while (!abort.signal.aborted) {
      await ctx.client
        .stream(Api.vms.statsAll, { query: { stream: true } }, ({ stats: s }) => {
          let hist = histories.get(s.id);
          if (!hist) histories.set(s.id, (hist = { cpu: [], mem: [], guestBytes: 0 }));
          hist.cpu = [...hist.cpu, s.cpuPercent].slice(-HISTORY);
          hist.mem = [...hist.mem, s.memory?.rssBytes ?? 0].slice(-HISTORY);
          hist.guestBytes = s.memory?.guestBytes ?? hist.guestBytes;
          drawStats(s.id);
        }, abort.signal)
        .catch(() => {});
      if (!abort.signal.aborted) await new Promise((r) => setTimeout(r, 2000));
    }
  };

  const unsubscribe = ctx.onEvent((e) => {
    if (e.type === 'vm' || e.action === 'fork') refresh();
  });
  // Ages and anything an event did not cover; not while a fork count is being typed in the table.
  const timer = setInterval(() => {
    if (!root.contains(document.activeElement) || document.activeElement?.tagName !== 'INPUT') refresh();
  }, 30_000);
  void load();
  void stats();
  return () => {
    abort.abort();
    unsubscribe();
    clearInterval(timer);
  };
};
