import type { CacheEntry } from '../../api/builds.js';
import { Api } from '../../api/routes.js';
import type { Snapshot } from '../../api/snapshots.js';
import type { TemplateView } from '../../api/templates.js';
import type { Vm } from '../../api/vms.js';
import { debounce, forkFrom, type View } from '../context.js';
import { fill, formatBytes, h, shortId } from '../dom.js';
import { lineage, type LineageNode } from '../lineage.js';

/** The snapshot lineage drawn as a tree; a snapshot's Fork button starts forks of it. */
export const treeView: View = (root, ctx) => {
  const count = h('input', { type: 'number', min: 1, max: 100, value: 1, id: 'fork-count', class: 'count', 'aria-label': 'forks per click' });
  const tree = h('div', { class: 'tree' });
  fill(
    root,
    h('h1', {}, 'Snapshot tree'),
    h('p', { class: 'muted' }, 'Each VM with the snapshots taken of it, each snapshot with the VMs forked from it. Forks per click: ', count),
    tree,
  );

  const load = async () => {
    try {
      const [vms, snapshots, cache, templates] = await Promise.all([
        ctx.client.call(Api.vms.list, { query: { all: true } }),
        ctx.client.call(Api.snapshots.list),
        ctx.client.call(Api.cache.list),
        ctx.client.call(Api.templates.list),
      ]);
      draw(vms, snapshots, cache, templates);
    } catch (err) {
      ctx.notify(`snapshot tree: ${(err as Error).message}`, 'error');
    }
  };
  const refresh = debounce(() => void load(), 150);

  const draw = (vms: Vm[], snapshots: Snapshot[], cache: CacheEntry[], templates: TemplateView[]) => {
    const vmById = new Map(vms.map((v) => [v.id, v]));
    const snapById = new Map(snapshots.map((s) => [s.id, s]));
    const cached = new Map(cache.map((c) => [c.snapshotId, c]));
    const templateOf = new Map<string, string>();
    for (const t of templates) {
      if (!t.revision) continue;
      const name = `${t.name}:${t.role}`;
      templateOf.set(t.revision.diskSnapshot, `template ${name} (disk)`);
      if (t.revision.warmSnapshot) templateOf.set(t.revision.warmSnapshot, `template ${name}`);
    }
    const item = (node: LineageNode): HTMLElement => {
      const children = node.children.length ? h('ul', {}, node.children.map(item)) : null;
      if (node.kind === 'vm') {
        const vm = vmById.get(node.id)!;
        return h(
          'li',
          { class: 'node vm', 'data-vm': vm.name },
          h('span', { class: 'kind' }, 'VM'),
          ' ',
          h('a', { href: `#/vms/${encodeURIComponent(vm.id)}` }, vm.name),
          ' ',
          h('span', { class: `state ${vm.state}` }, vm.state),
          children,
        );
      }
      const s = snapById.get(node.id)!;
      const marks = [
        cached.has(s.id) && h('span', { class: 'mark cache', title: cached.get(s.id)!.description }, 'cache'),
        templateOf.has(s.id) && h('span', { class: 'mark template' }, templateOf.get(s.id)!),
        s.pool && h('span', { class: 'mark pool' }, `pool ${s.pool.ready}/${s.pool.size}${s.pool.warm ? ' warm' : ''}`),
      ];
      const fork = h(
        'button',
        {
          class: 'fork',
          'data-fork': s.name,
          onclick: () => void forkFrom(ctx, s.name, count, async () => s.id).then(refresh),
        },
        'Fork',
      );
      return h(
        'li',
        { class: 'node snapshot', 'data-snapshot': s.name },
        h('span', { class: 'kind' }, 'snapshot'),
        ' ',
        h('b', {}, s.name),
        ' ',
        h('span', { class: 'muted mono' }, shortId(s.id)),
        ' ',
        h('span', { class: 'muted' }, formatBytes(s.memoryBytes + s.diskBytes + s.stateBytes)),
        ' ',
        marks,
        ' ',
        fork,
        children,
      );
    };
    const roots = lineage(vms, snapshots);
    fill(tree, roots.length ? h('ul', { class: 'root' }, roots.map(item)) : h('p', { class: 'muted' }, 'No VMs or snapshots yet.'));
  };

  const unsubscribe = ctx.onEvent(() => refresh());
  void load();
  return () => unsubscribe();
};
