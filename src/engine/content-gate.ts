/**
 * Leases on the image store: pulls, imports, pushes and exports hold a shared lease while they
 * write or read blobs, unpack folders and base disks that no record names yet; garbage collection
 * (rmi, image prune, the cache cap) holds an exclusive one. So GC never deletes what an operation
 * in flight is using, the way containerd's leases protect content. A waiting GC goes before new
 * shared leases, so a stream of pulls cannot starve it. One celld owns a CELL_HOME, so an
 * in-process gate is enough.
 */
export class ContentGate {
  private shared = 0;
  private exclusive = false;
  private exclusiveWaiting = 0;
  private waiters: (() => void)[] = [];

  async withShared<T>(fn: () => Promise<T>): Promise<T> {
    await this.until(() => !this.exclusive && this.exclusiveWaiting === 0);
    this.shared++;
    try {
      return await fn();
    } finally {
      this.shared--;
      this.wake();
    }
  }

  async withExclusive<T>(fn: () => Promise<T>): Promise<T> {
    this.exclusiveWaiting++;
    try {
      await this.until(() => !this.exclusive && this.shared === 0);
    } finally {
      this.exclusiveWaiting--;
    }
    this.exclusive = true;
    try {
      return await fn();
    } finally {
      this.exclusive = false;
      this.wake();
    }
  }

  private async until(ready: () => boolean): Promise<void> {
    while (!ready()) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
