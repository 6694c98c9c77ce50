import { Api } from '../../api/routes.js';
import { debounce, type View } from '../context.js';
import { fill, formatAgo, formatBytes, h, shortId } from '../dom.js';

type Cell = string | number | Node;

function table(id: string, title: string, headers: string[], rows: Cell[][], empty: string): HTMLElement {
  return h(
    'section',
    { id },
    h('h2', {}, title, ' ', h('span', { class: 'muted' }, `(${rows.length})`)),
    rows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))), h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))))
      : h('p', { class: 'muted' }, empty),
  );
}

/** Images, volumes, networks, the action cache and templates, with what they take on disk. */
export const resourcesView: View = (root, ctx) => {
  const load = async () => {
    try {
      const [df, images, volumes, networks, cache, templates] = await Promise.all([
        ctx.client.call(Api.system.df),
        ctx.client.call(Api.images.list),
        ctx.client.call(Api.volumes.list),
        ctx.client.call(Api.networks.list),
        ctx.client.call(Api.cache.list),
        ctx.client.call(Api.templates.list),
      ]);
      const usage = (k: 'images' | 'snapshots' | 'vms' | 'volumes' | 'buildCache', label: string) =>
        h('li', {}, h('b', {}, label), ` ${df[k].count}, ${formatBytes(df[k].usedBytes)} used`);
      fill(
        root,
        h('h1', {}, 'Images, volumes, networks, cache'),
        h(
          'ul',
          { class: 'usage' },
          usage('images', 'Images'),
          usage('snapshots', 'Snapshots'),
          usage('vms', 'VM disks'),
          usage('volumes', 'Volumes'),
          usage('buildCache', 'Action cache'),
          h('li', {}, h('b', {}, 'Total'), ` ${formatBytes(df.total.usedBytes)} used`),
        ),
        table(
          'images',
          'Images',
          ['Reference', 'Digest', 'Size', 'Last used'],
          images.map((i) => [i.reference + (i.builtin ? ' (built in)' : ''), h('span', { class: 'mono' }, i.digest.slice(7, 19)), formatBytes(i.sizeBytes), formatAgo(i.lastUsed)]),
          'No images.',
        ),
        table(
          'volumes',
          'Volumes',
          ['Name', 'Size', 'Used', 'Mounted by'],
          volumes.map((v) => [v.name, formatBytes(v.sizeBytes), formatBytes(v.usedBytes), v.users.map((u) => `${u.name}:${u.path}${u.running ? '' : ' (stopped)'}`).join(', ') || '-']),
          'No volumes.',
        ),
        table(
          'networks',
          'Networks',
          ['Name', 'Subnet', 'Kind', 'VMs'],
          networks.map((n) => [n.name, n.subnet, n.internal ? 'internal' : n.builtin ? 'default' : 'bridge', n.vms.map((v) => `${v.name} ${v.address}`).join(', ') || '-']),
          'No networks.',
        ),
        table(
          'cache',
          'Action cache',
          ['Key', 'What ran', 'Snapshot', 'Size', 'Hits', 'Last used'],
          cache.map((c) => [h('span', { class: 'mono' }, c.key.slice(0, 12)), c.description, c.snapshotName ?? shortId(c.snapshotId), formatBytes(c.bytes), c.hits, formatAgo(c.lastUsed)]),
          'The action cache is empty.',
        ),
        table(
          'templates',
          'Templates',
          ['Template', 'Revision', 'Built', 'Warm snapshot'],
          templates.map((t) => [`${t.name}:${t.role}`, t.revision ? h('span', { class: 'mono' }, t.revision.revisionHash.slice(0, 12)) : '-', formatAgo(t.revision?.builtAt), t.revision?.warmSnapshot ? shortId(t.revision.warmSnapshot) : '-']),
          'No templates.',
        ),
      );
    } catch (err) {
      ctx.notify(`resources: ${(err as Error).message}`, 'error');
    }
  };
  const refresh = debounce(() => void load(), 300);
  const unsubscribe = ctx.onEvent(() => refresh());
  void load();
  return () => unsubscribe();
};
