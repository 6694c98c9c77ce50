import { statSync } from 'node:fs';
import type { DiskIo, MachineControl } from '../backend.js';
import { sumBlockStats } from './block-stats.js';
import { restoreState, saveState, type SocketPeer } from './migration.js';
import type { QmpClient } from './qmp.js';

export interface QmpControlOptions {
  /** QEMU's pid: a save socket is given to QEMU's user (it may run as its own uid). */
  pid: number;
  /** Where QEMU, started `-incoming unix:...`, waits for its state. */
  incomingSocket?: string;
  /** Prefix of the /tmp folder a save's socket goes in (see migration.ts saveListener). */
  saveDirPrefix?: string;
  /** Called once when QMP closes (the machine ended, or we let go of it): cleans up after it. */
  onEnd?: () => void;
}

/** MachineControl over QMP. */
export class QmpControl implements MachineControl {
  private readonly listeners: (() => void)[] = [];

  constructor(
    readonly qmp: QmpClient,
    private readonly opts: QmpControlOptions,
  ) {
    if (opts.onEnd) qmp.once('close', opts.onEnd);
  }

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
    return saveState(this.qmp, path, { ignoreShared: !opts.withRam, peer: this.peer(), socketDirPrefix: this.opts.saveDirPrefix });
  }

  loadState(path: string, opts: { withRam: boolean }): Promise<void> {
    if (!this.opts.incomingSocket) return Promise.reject(new Error('loadState: this machine was not started incoming'));
    return restoreState(this.qmp, path, { incomingSocket: this.opts.incomingSocket, ignoreShared: !opts.withRam });
  }

  /** The guest's disk traffic: `query-blockstats`, its drives added up (works on a paused machine too). */
  async diskIo(): Promise<DiskIo> {
    return sumBlockStats(await this.qmp.execute('query-blockstats'));
  }

  onClose(listener: () => void): void {
    this.listeners.push(listener);
    this.qmp.once('close', listener);
  }

  clearCloseListeners(): void {
    for (const l of this.listeners.splice(0)) this.qmp.removeListener('close', l);
  }

  close(): void {
    this.qmp.close();
  }

  /** QEMU's user when it is not ours (it dropped to its own uid): the one to own a save socket. */
  private peer(): SocketPeer | undefined {
    try {
      const { uid, gid } = statSync(`/proc/${this.opts.pid}`);
      return uid === process.getuid?.() ? undefined : { uid, gid };
    } catch {
      return undefined;
    }
  }
}
