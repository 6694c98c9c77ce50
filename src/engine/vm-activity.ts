/**
 * When each VM was last used (`--idle-timeout`): an exec or a file copy in flight keeps it busy,
 * the end of one is its last use. In memory only: a celld restart counts as use, so a restart can
 * only make a VM live longer, never end it early.
 */
export class VmActivity {
  private readonly last = new Map<string, number>();
  private readonly inFlight = new Map<string, number>();

  touch(id: string, at = Date.now()): void {
    this.last.set(id, at);
  }

  /** Work on the VM begins; the returned function ends it (call it once, however the work ended). */
  begin(id: string): () => void {
    this.touch(id);
    this.inFlight.set(id, (this.inFlight.get(id) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const left = (this.inFlight.get(id) ?? 1) - 1;
      if (left > 0) this.inFlight.set(id, left);
      else this.inFlight.delete(id);
      this.touch(id);
    };
  }

  /** Its last use (ms), or undefined when none was seen by this celld. */
  lastAt(id: string): number | undefined {
    return this.last.get(id);
  }

  busy(id: string): boolean {
    return this.inFlight.has(id);
  }

  forget(id: string): void {
    this.last.delete(id);
    this.inFlight.delete(id);
  }

  /** Runs `work` as a use of VM `id`. */
  async during<T>(id: string, work: () => Promise<T>): Promise<T> {
    const end = this.begin(id);
    try {
      return await work();
    } finally {
      end();
    }
  }
}
