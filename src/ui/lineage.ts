import type { Snapshot } from '../api/snapshots.js';
import type { Vm } from '../api/vms.js';

/** The lineage as the page draws it: VMs and snapshots, each under what it came from. */
export interface LineageNode {
  kind: 'vm' | 'snapshot';
  id: string;
  children: LineageNode[];
}

/**
 * VM -> its snapshots -> their forks -> their snapshots...: a snapshot hangs under the VM it was
 * taken of (or, with that VM gone, the snapshot that VM came from); a VM under the snapshot it was
 * forked from, except a snapshot of itself (a VM snapshotted runs on from its own snapshot: it
 * stays where it was). What has no parent left is a root; data that would loop makes a root too.
 */
export function lineage(vms: Vm[], snapshots: Snapshot[]): LineageNode[] {
  const snapById = new Map(snapshots.map((s) => [s.id, s]));
  const nodes = new Map<string, LineageNode>();
  const parentOf = new Map<string, string>();
  for (const vm of vms) nodes.set(vm.id, { kind: 'vm', id: vm.id, children: [] });
  for (const s of snapshots) nodes.set(s.id, { kind: 'snapshot', id: s.id, children: [] });
  const present = (id: string | null | undefined) => (id && nodes.has(id) ? id : undefined);
  for (const vm of vms) {
    let base = present(vm.baseSnapshot);
    for (let hops = 0; base && snapById.get(base)?.parentVm === vm.id && hops < snapshots.length; hops++) base = present(snapById.get(base)!.parentSnapshot);
    if (base) parentOf.set(vm.id, base);
  }
  for (const s of snapshots) {
    const parent = present(s.parentVm) ?? present(s.parentSnapshot);
    if (parent && parent !== s.id) parentOf.set(s.id, parent);
  }
  // A parent chain that comes back to where it started is cut there.
  for (const id of nodes.keys()) {
    const seen = new Set([id]);
    for (let p = parentOf.get(id); p; p = parentOf.get(p)) {
      if (seen.has(p)) {
        parentOf.delete(id);
        break;
      }
      seen.add(p);
    }
  }
  const roots: LineageNode[] = [];
  for (const [id, node] of nodes) {
    const parent = parentOf.get(id);
    (parent ? nodes.get(parent)!.children : roots).push(node);
  }
  return roots;
}
