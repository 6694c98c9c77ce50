import { EventEmitter } from 'node:events';
import { appendFile, open, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';

export type LogStream = 'stdout' | 'stderr';

export interface LogEntry {
  time: string;
  stream: LogStream;
  /** The bytes as UTF-8 text (like Docker's json-file driver). */
  text: string;
}

/** Where a reader is: a byte offset in the current file or, before it, in the rotated one. */
export interface LogCursor {
  file: 'rotated' | 'current';
  offset: number;
  /** Rotations seen when the cursor was made: a later rotation moves `current` to `rotated`. */
  generation: number;
}

export interface VmLogsOptions {
  /** output.log is rotated to output.log.1 past this size, like Docker's json-file `max-size` (two files kept). */
  maxBytes?: number;
  /** Bytes read per batch, so a large log is never read into memory whole. */
  readChunk?: number;
}

export const DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024;

interface LogState {
  size: number | undefined;
  generation: number;
  queue: Promise<void>;
}

/**
 * The main command's output of each VM, one JSON line per chunk in `vms/<id>/output.log` (and the
 * one before it in output.log.1), plus a live feed for `cell logs -f`. Writes are queued so lines
 * never interleave; a guest that prints without end costs at most two files of `maxBytes`.
 */
export class VmLogs extends EventEmitter {
  private readonly states = new Map<string, LogState>();
  private readonly maxBytes: number;
  private readonly readChunk: number;

  constructor(
    private readonly vmDir: (id: string) => string,
    opts: VmLogsOptions = {},
  ) {
    super();
    this.setMaxListeners(0);
    this.maxBytes = opts.maxBytes ?? DEFAULT_LOG_MAX_BYTES;
    this.readChunk = opts.readChunk ?? 1024 * 1024;
  }

  path(id: string, file: LogCursor['file'] = 'current'): string {
    return join(this.vmDir(id), file === 'current' ? 'output.log' : 'output.log.1');
  }

  append(id: string, stream: LogStream, chunk: Buffer): void {
    const entry: LogEntry = { time: new Date().toISOString(), stream, text: chunk.toString('utf8') };
    const line = JSON.stringify(entry) + '\n';
    const state = this.state(id);
    state.queue = state.queue
      .then(async () => {
        state.size ??= await stat(this.path(id)).then((s) => s.size, () => 0);
        const bytes = Buffer.byteLength(line);
        if (state.size > 0 && state.size + bytes > this.maxBytes) {
          await rename(this.path(id), this.path(id, 'rotated'));
          state.size = 0;
          state.generation++;
        }
        await appendFile(this.path(id), line);
        state.size += bytes;
      })
      .catch(() => {});
    this.emit(`entry:${id}`, entry);
  }

  /** Resolves once everything appended so far is on disk. */
  flushed(id: string): Promise<void> {
    return this.state(id).queue;
  }

  /** Signals followers that no more output will come (the VM stopped); forgets the VM's state. */
  end(id: string): void {
    this.emit(`end:${id}`);
  }

  /** Forgets a removed VM. */
  forget(id: string): void {
    this.states.delete(id);
  }

  /** A cursor at the start of what is kept: the rotated file, then the current one. */
  start(id: string): LogCursor {
    return { file: 'rotated', offset: 0, generation: this.state(id).generation };
  }

  /**
   * Entries from `cursor` on, at most about `readChunk` bytes of them; returns them with the
   * cursor after the last whole line, and whether more is already there to read.
   */
  async readFrom(id: string, cursor: LogCursor): Promise<{ entries: LogEntry[]; cursor: LogCursor; more: boolean }> {
    await this.flushed(id);
    const generation = this.state(id).generation;
    let at = cursor;
    if (at.generation !== generation) {
      // Rotated since: what was current is now the rotated file (and older rotations are gone).
      at = at.file === 'current' && generation === at.generation + 1 ? { file: 'rotated', offset: at.offset, generation } : { file: 'rotated', offset: 0, generation };
    }
    const { data, size } = await this.readChunkAt(this.path(id, at.file), at.offset);
    const lastNewline = data.lastIndexOf(0x0a);
    if (lastNewline < 0) {
      // A line longer than a whole chunk is not one we wrote whole: skip past it.
      if (data.length === this.readChunk) return { entries: [], cursor: { ...at, offset: at.offset + data.length }, more: true };
      // Nothing whole left in the rotated file: go on in the current one.
      if (at.file === 'rotated') return this.readFrom(id, { file: 'current', offset: 0, generation });
      return { entries: [], cursor: at, more: false };
    }
    const next = { ...at, offset: at.offset + lastNewline + 1 };
    return { entries: parseLines(data.subarray(0, lastNewline)), cursor: next, more: next.offset < size || at.file === 'rotated' };
  }

  private async readChunkAt(path: string, offset: number): Promise<{ data: Buffer; size: number }> {
    try {
      const handle = await open(path, 'r');
      try {
        const { size } = await handle.stat();
        const data = Buffer.alloc(Math.max(0, Math.min(size - offset, this.readChunk)));
        if (data.length > 0) await handle.read(data, 0, data.length, offset);
        return { data, size };
      } finally {
        await handle.close();
      }
    } catch {
      return { data: Buffer.alloc(0), size: 0 };
    }
  }

  private state(id: string): LogState {
    let state = this.states.get(id);
    if (!state) {
      state = { size: undefined, generation: 0, queue: Promise.resolve() };
      this.states.set(id, state);
    }
    return state;
  }
}

function parseLines(data: Buffer): LogEntry[] {
  const entries: LogEntry[] = [];
  for (const line of data.toString('utf8').split('\n')) {
    if (!line) continue;
    try {
      entries.push(JSON.parse(line) as LogEntry);
    } catch {
      /* a torn line after a crash: skip it */
    }
  }
  return entries;
}
