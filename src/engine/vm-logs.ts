import { EventEmitter } from 'node:events';
import { appendFile, open } from 'node:fs/promises';
import { join } from 'node:path';

export type LogStream = 'stdout' | 'stderr';

export interface LogEntry {
  time: string;
  stream: LogStream;
  /** The bytes as UTF-8 text (like Docker's json-file driver). */
  text: string;
}

/**
 * The main command's output of each VM, one JSON line per chunk in `vms/<id>/output.log`, plus a
 * live feed for `cell logs -f`. Writes are queued so lines never interleave.
 */
export class VmLogs extends EventEmitter {
  private readonly queues = new Map<string, Promise<void>>();

  constructor(private readonly vmDir: (id: string) => string) {
    super();
    this.setMaxListeners(0);
  }

  path(id: string): string {
    return join(this.vmDir(id), 'output.log');
  }

  append(id: string, stream: LogStream, chunk: Buffer): void {
    const entry: LogEntry = { time: new Date().toISOString(), stream, text: chunk.toString('utf8') };
    const previous = this.queues.get(id) ?? Promise.resolve();
    const next = previous.then(() => appendFile(this.path(id), JSON.stringify(entry) + '\n')).catch(() => {});
    this.queues.set(id, next);
    this.emit(`entry:${id}`, entry);
  }

  /** Resolves once everything appended so far is on disk. */
  flushed(id: string): Promise<void> {
    return this.queues.get(id) ?? Promise.resolve();
  }

  /** Signals followers that no more output will come (the VM stopped). */
  end(id: string): void {
    this.emit(`end:${id}`);
  }

  /**
   * Entries from byte `offset` of the log on; returns them with the offset after the last whole
   * line, so a follower can call again from there without missing or repeating anything.
   */
  async readFrom(id: string, offset: number): Promise<{ entries: LogEntry[]; offset: number }> {
    await this.flushed(id);
    let data: Buffer;
    try {
      const handle = await open(this.path(id), 'r');
      try {
        const { size } = await handle.stat();
        data = Buffer.alloc(Math.max(0, size - offset));
        if (data.length > 0) await handle.read(data, 0, data.length, offset);
      } finally {
        await handle.close();
      }
    } catch {
      return { entries: [], offset };
    }
    const lastNewline = data.lastIndexOf(0x0a);
    if (lastNewline < 0) return { entries: [], offset };
    const entries: LogEntry[] = [];
    for (const line of data.subarray(0, lastNewline).toString('utf8').split('\n')) {
      if (!line) continue;
      try {
        entries.push(JSON.parse(line) as LogEntry);
      } catch {
        /* a torn line after a crash: skip it */
      }
    }
    return { entries, offset: offset + lastNewline + 1 };
  }
}
