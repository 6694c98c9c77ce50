import { CellError, ErrorCodes } from '../domain/errors.js';
import type { VmRecord } from '../domain/vm.js';
import type { EngineContext } from './context.js';
import type { NetworkView } from './networking.js';
import type { Vms } from './vms.js';

/** `cell network ...`: named networks and who is on them (docs/networking.md). */
export class Networks {
  constructor(
    private readonly ctx: EngineContext,
    private readonly vms: Vms,
  ) {}

  list(): NetworkView[] {
    return this.ctx.network.list();
  }

  get(name: string): NetworkView {
    const found = this.list().find((n) => n.name === name);
    if (!found) throw new CellError(ErrorCodes.NOT_FOUND, `no network named ${name}`);
    return found;
  }

  create(name: string, opts: { subnet?: string; internal?: boolean } = {}): Promise<NetworkView> {
    return this.ctx.locks.run('networks', () => this.ctx.network.create(name, opts));
  }

  remove(name: string): Promise<void> {
    return this.ctx.locks.run('networks', () => this.ctx.network.remove(name));
  }

  /** Removes every named network no VM is on. */
  prune(): Promise<string[]> {
    return this.ctx.locks.run('networks', async () => {
      const removed: string[] = [];
      for (const n of this.list()) {
        if (n.builtin || n.vms.length > 0) continue;
        await this.ctx.network.remove(n.name);
        removed.push(n.name);
      }
      return removed;
    });
  }

  connect(name: string, vm: string): Promise<VmRecord> {
    return this.vms.connect(vm, name);
  }

  disconnect(name: string, vm: string): Promise<VmRecord> {
    return this.vms.disconnect(vm, name);
  }
}
