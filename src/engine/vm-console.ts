import { once } from 'node:events';
import { isLive } from '../domain/vm-state.js';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { EngineContext } from './context.js';
import type { Vms } from './vms.js';

/** One `cell console`: the guest's serial output to `onData`, `write` to its serial input. */
export interface ConsoleSession {
  readonly id: string;
  /** Resolves once QEMU took the bytes (a client typing faster than the serial line waits). */
  write(bytes: Buffer): Promise<void>;
  /** Settles when the session ends: the client left (`close`), or the VM's QEMU went. */
  readonly ended: Promise<void>;
  close(): void;
}

/** Bytes queued towards the guest before a writer waits for the serial line to drain. */
const MAX_PENDING_INPUT = 64 * 1024;

/**
 * `cell console VM`: the VM's serial console (the seed's Console), read and written through the
 * socket QEMU serves it on (its output is logged to serial.log whether or not anyone reads). QEMU
 * takes one client per socket, so one session per VM at a time, as `virsh console` has it; while
 * the client's connection is behind, the socket is paused and QEMU's serial line waits (only the
 * guest that floods its own console is slowed), so celld holds no more than a socket's buffers.
 */
export class Consoles {
  private readonly byVm = new Map<string, ConsoleSession>();
  private readonly byId = new Map<string, { vm: string; session: ConsoleSession }>();
  private readonly opening = new Set<string>();

  constructor(
    private readonly ctx: Pick<EngineContext, 'stores' | 'live' | 'backend'>,
    private readonly vms: Vms,
  ) {}

  async open(ref: string, sink: { data(bytes: Buffer): void; behind(): Promise<void> | undefined }): Promise<ConsoleSession> {
    const vm = this.vms.resolve(ref);
    const current = this.ctx.stores.vms.get(vm.id)!;
    if (!isLive(current.state)) {
      throw new CellError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm.name} is not running (state: ${current.state}): its console has nothing to show`);
    }
    if (!this.ctx.backend.capabilities.console) throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'this backend has no serial console');
    if (this.byVm.has(vm.id) || this.opening.has(vm.id)) throw new CellError(ErrorCodes.CONFLICT, `VM ${vm.name}'s console is in use by another cell console (one at a time)`);
    const live = this.ctx.live.require(vm.id);
    const path = this.ctx.backend.files(live.dir).consoleSocket;
    // Held from here: a second open while this one connects is refused, not queued behind it at QEMU.
    this.opening.add(vm.id);
    let socket: Socket;
    try {
      socket = await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => resolve(s));
        s.once('error', (err) => reject(new CellError(ErrorCodes.CONFLICT, `cannot reach VM ${vm.name}'s console: ${err.message}`)));
      });
    } finally {
      this.opening.delete(vm.id);
    }
    let finish: () => void = () => {};
    const ended = new Promise<void>((resolve) => (finish = resolve));
    const session: ConsoleSession = {
      id: randomBytes(12).toString('hex'),
      write: async (bytes) => {
        if (socket.destroyed) return;
        if (!socket.write(bytes) && socket.writableLength >= MAX_PENDING_INPUT) await Promise.race([once(socket, 'drain').catch(() => {}), ended]);
      },
      ended,
      close: () => socket.destroy(),
    };
    socket.on('data', (chunk: Buffer) => {
      sink.data(chunk);
      const behind = sink.behind();
      if (behind) {
        socket.pause();
        void behind.then(() => socket.resume());
      }
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.byVm.delete(vm.id);
      this.byId.delete(session.id);
      finish();
    });
    // QEMU ending closes the socket from its side; a VM stopped by celld may leave it to us.
    void live.gone.then(() => socket.destroy());
    this.byVm.set(vm.id, session);
    this.byId.set(session.id, { vm: vm.id, session });
    return session;
  }

  /** The session with this id (the input route names it). */
  session(id: string): ConsoleSession {
    const found = this.byId.get(id);
    if (!found) throw new CellError(ErrorCodes.NOT_FOUND, `no console session ${id} is open`);
    return found.session;
  }

  closeAll(): void {
    for (const session of this.byVm.values()) session.close();
  }
}
