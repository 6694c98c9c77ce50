import type { MachineControl } from '../backend.js';
import { restoreState, saveState } from './migration.js';
import type { QmpClient } from './qmp.js';

/** MachineControl over QMP. */
export class QmpControl implements MachineControl {
  constructor(readonly qmp: QmpClient) {}

  async pause(): Promise<void> {
    await this.qmp.execute('stop');
  }

  async resume(): Promise<void> {
    await this.qmp.execute('cont');
  }

  async quit(): Promise<void> {
    await this.qmp.execute('quit');
  }

  saveState(path: string, opts: { withRam: boolean }): Promise<void> {
    // Without RAM: x-ignore-shared leaves out the MAP_SHARED RAM file, which the caller copies.
    return saveState(this.qmp, path, { ignoreShared: !opts.withRam });
  }

  loadState(path: string, opts: { withRam: boolean }): Promise<void> {
    return restoreState(this.qmp, path, { ignoreShared: !opts.withRam });
  }

  onClose(listener: () => void): void {
    this.qmp.once('close', listener);
  }

  clearCloseListeners(): void {
    this.qmp.removeAllListeners('close');
  }

  close(): void {
    this.qmp.close();
  }
}
