import { stat, truncate, appendFile } from 'node:fs/promises';

/**
 * The guests' console logs (serial.log) are written by QEMU, which has no size limit: a guest
 * printing to /dev/console without end would fill CELL_HOME's disk. QEMU opens them append-only
 * (argv.ts: `append=on`), so celld can cut one back to nothing when it passes `maxBytes` and
 * QEMU's next write lands at the new end. A line says that output was dropped.
 */
export class ConsoleLogCap {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly logs: () => string[],
    private readonly maxBytes: number,
    private readonly intervalMs = 5000,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => void this.sweep(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Cuts back every log past the cap; returns how many were. */
  async sweep(): Promise<number> {
    let cut = 0;
    for (const path of this.logs()) {
      const size = await stat(path).then((s) => s.size, () => 0);
      if (size <= this.maxBytes) continue;
      try {
        await truncate(path, 0);
        await appendFile(path, `[cellvm: ${size} bytes of console output past the ${this.maxBytes}-byte cap were dropped]\n`);
        cut++;
      } catch {
        /* the VM went meanwhile */
      }
    }
    return cut;
  }
}
