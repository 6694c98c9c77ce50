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
  /** Each VM's row, kept while what it shows is unchanged (a redraw keeps a fork count being typed). */
  const rows = new Map<string, { shown: string; tr: HTMLTableRowElement; cpu: HTMLElement; mem: HTMLElement; age: HTMLElement; createdAt: string }>();
  const empty = h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No VMs. Start one: cell run -d busybox -- sleep 1d'));

  const drawStats = (id: string) => {
    const c = rows.get(id);
    const hist = histories.get(id);
    if (!c || !hist) return;
    const cpu = hist.cpu.at(-1) ?? 0;
    const mem = hist.mem.at(-1) ?? 0;
    fill(c.cpu, sparkline(hist.cpu, 100, 'CPU'), h('span', { class: 'num' }, `${cpu.toFixed(0)}%`));
    fill(c.mem, sparkline(hist.mem, hist.guestBytes, 'memory'), h('span', { class: 'num' }, formatBytes(mem)));
  };

  const rowFor = (vm: Vm, shown: string) => {
    const cpu = h('td', { class: 'stat' });
    const mem = h('td', { class: 'stat' });
    const age = h('td', {}, formatAgo(vm.createdAt));
    const labels = Object.entries(vm.spec.labels ?? {}).map(([k, v]) => h('span', { class: 'label' }, v ? `${k}=${v}` : k));
    const tr = h(
      'tr',
      { 'data-vm': vm.name },
      h('td', {}, h('a', { href: `#/vms/${encodeURIComponent(vm.id)}` }, vm.name), h('div', { class: 'muted mono' }, shortId(vm.id))),
      h('td', {}, h('span', { class: `state ${vm.state}` }, vm.state)),
      h('td', {}, vm.health ? h('span', { class: `health ${vm.health.status}` }, vm.health.status) : h('span', { class: 'muted' }, '-')),
      h('td', {}, labels),
      h('td', { class: 'mono' }, vm.baseSnapshot ? `snapshot ${shortId(vm.baseSnapshot)}` : vm.spec.image),
      cpu,
      mem,
      age,
      h('td', {}, vmActions(ctx, vm, refresh)),
    );
    return { shown, tr, cpu, mem, age, createdAt: vm.createdAt };
  };

  const draw = (vms: Vm[]) => {
    fill(count, `(${vms.length})`);
    const wanted = vms.map((vm) => {
      const shown = JSON.stringify([vm.name, vm.state, vm.health?.status, vm.spec.labels, vm.baseSnapshot, vm.spec.image]);
      let row = rows.get(vm.id);
      if (!row || row.shown !== shown) {
        row = rowFor(vm, shown);
        rows.set(vm.id, row);
        drawStats(vm.id);
      }
      fill(row.age, formatAgo(row.createdAt));
      return row.tr;
    });
    const ids = new Set(vms.map((vm) => vm.id));
    for (const id of [...rows.keys()]) if (!ids.has(id)) rows.delete(id);
    for (const id of histories.keys()) if (!ids.has(id)) histories.delete(id);
    // Rows already in place stay put (moving a row would take the focus from its input).
    if (wanted.length === 0) wanted.push(empty);
    let cursor = body.firstChild;
    for (const tr of wanted) {
      if (tr === cursor) cursor = cursor.nextSibling;
      else body.insertBefore(tr, cursor);
    }
    while (cursor) {
      const next: ChildNode | null = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
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
  // Ages and anything an event did not cover (rows that did not change are kept as they are).
  const timer = setInterval(refresh, 10_000);
  void load();
  void stats();
  return () => {
    abort.abort();
    unsubscribe();
    clearInterval(timer);
  };
};
