import { Api } from '../../api/routes.js';
import type { Vm } from '../../api/vms.js';
import { act, forkFrom, type Ctx } from '../context.js';
import { h } from '../dom.js';

/**
 * What can be done to a VM from the page: stop or start, snapshot, fork N (a snapshot taken now,
 * then N forks of it), remove. `changed` refreshes whatever shows the VM.
 */
export function vmActions(ctx: Ctx, vm: Vm, changed: () => void): HTMLElement {
  const { client } = ctx;
  const ref = vm.id;
  const running = vm.state === 'running' || vm.state === 'paused';
  const count = h('input', { type: 'number', min: 1, max: 100, value: 1, class: 'count', 'aria-label': `forks of ${vm.name}` });
  const then = (p: Promise<void>) => p.finally(changed);
  return h(
    'span',
    { class: 'actions' },
    running
      ? h('button', { onclick: () => then(act(ctx, `stopping ${vm.name}`, () => client.call(Api.vms.stop, { params: { ref }, body: {} }))) }, 'Stop')
      : h('button', { onclick: () => then(act(ctx, `starting ${vm.name}`, () => client.call(Api.vms.start, { params: { ref } }))) }, 'Start'),
    running &&
      h(
        'button',
        {
          onclick: () =>
            then(
              act(ctx, `snapshotting ${vm.name}`, async () => {
                const snap = await client.call(Api.snapshots.take, { params: { ref }, body: {} });
                return `snapshot ${snap.name} taken`;
              }),
            ),
        },
        'Snapshot',
      ),
    running && count,
    running &&
      h(
        'button',
        { onclick: () => then(forkFrom(ctx, vm.name, count, async () => (await client.call(Api.snapshots.take, { params: { ref }, body: {} })).id)) },
        'Fork',
      ),
    h(
      'button',
      {
        class: 'danger',
        onclick: () => {
          if (!confirm(`Remove ${vm.name}${running ? ' (it is running: it will be stopped)' : ''}?`)) return;
          void then(act(ctx, `removing ${vm.name}`, () => client.call(Api.vms.remove, { params: { ref }, query: { force: true } })));
        },
      },
      'Remove',
    ),
  );
}
