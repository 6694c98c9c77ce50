import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { connectWithRetry } from '../unix-socket.js';
import { CellError, ErrorCodes } from '../../domain/errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  command: string;
}

/**
 * A QMP (QEMU Machine Protocol) client: JSON lines over the VM's unix socket. Commands are answered
 * in order, so replies are matched by an `id` we attach. Emits 'event' for asynchronous events and
 * 'close' when QEMU goes away (the universal "this VM's process ended" signal, even for a QEMU
 * started by an earlier celld).
 */
export class QmpClient extends EventEmitter {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;

  private constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('close', () => this.onClose());
    socket.on('error', () => {
      /* 'close' follows and rejects what is pending */
    });
  }

  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const socket = await connectWithRetry(path, timeoutMs);
    const client = new QmpClient(socket);
    await client.waitGreeting(timeoutMs);
    await client.execute('qmp_capabilities');
    return client;
  }

  private greeting?: () => void;

  private waitGreeting(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new CellError(ErrorCodes.QMP_ERROR, 'QEMU did not greet on its QMP socket')), timeoutMs);
      this.greeting = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new CellError(ErrorCodes.QMP_ERROR, `QMP ${command}: QEMU is gone`));
    const id = String(this.nextId++);
    const message = JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id });
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.socket.write(message + '\n');
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ('QMP' in msg) {
      this.greeting?.();
      return;
    }
    if ('event' in msg) {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const pending = id ? this.pending.get(id) : undefined;
    if (!pending || !id) return;
    this.pending.delete(id);
    if ('error' in msg) {
      const error = msg.error as { class?: string; desc?: string };
      pending.reject(new CellError(ErrorCodes.QMP_ERROR, `QMP ${pending.command}: ${error.desc ?? error.class ?? 'error'}`));
    } else {
      pending.resolve(msg.return);
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      p.reject(new CellError(ErrorCodes.QMP_ERROR, `QMP ${p.command}: connection closed`));
    }
    this.pending.clear();
    this.emit('close');
  }
}
