import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { encodeExec, encodeFrame, FrameDecoder, FrameType, decodeExit, decodeError, type Frame } from '../../src/agent/frame.js';

/**
 * A bare boot of the host assets, independent of the engine and the QEMU driver: the recipe of
 * /work/shared/notes/qemu-recipes.md, a qcow2 overlay over the base image, the agent's port on a
 * unix socket. Used to prove the kernel, initramfs, agent and image fit together.
 */
export interface BootedGuest {
  pid: number;
  /** ms from QEMU spawn to the first PONG. */
  pongMs: number;
  exec(argv: string[]): Promise<{ stdout: string; stderr: string; code: number; signaled: boolean }>;
  serialTail(lines?: number): string;
  kill(): Promise<void>;
}

export interface BootOptions {
  kernel: string;
  initrd: string;
  baseDisk: string;
  hostname: string;
  deadlineMs?: number;
}

export async function bootGuest(opts: BootOptions): Promise<BootedGuest> {
  const deadline = Date.now() + (opts.deadlineMs ?? 30_000);
  // Short path: the socket path must fit sun_path (108 bytes). The cellt- prefix is what
  // scripts/test.sh checks for leaked QEMU processes.
  const dir = mkdtempSync('/tmp/cellt-host-');
  const serial = join(dir, 'serial.log');
  const sock = join(dir, 'agent.sock');
  const overlay = join(dir, 'disk.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', opts.baseDisk, overlay]);

  const started = Date.now();
  const qemu: ChildProcess = spawn(
    'qemu-system-x86_64',
    [
      '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on', '-accel', 'tcg', '-m', '256', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-serial', `file:${serial}`,
      '-kernel', opts.kernel, '-initrd', opts.initrd,
      '-append', `console=ttyS0 quiet no_timer_check tsc_early_khz=2000000 tsc=reliable cell.hostname=${opts.hostname} panic=-1`,
      '-drive', `id=root,file=${overlay},format=qcow2,if=none`, '-device', 'virtio-blk-device,drive=root',
      '-device', 'virtio-serial-device',
      '-chardev', `socket,id=agent,path=${sock},server=on,wait=off`,
      '-device', 'virtserialport,chardev=agent,name=cell.agent',
      '-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-device,rng=rng0',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let qemuStderr = '';
  qemu.stderr?.on('data', (c: Buffer) => (qemuStderr += c.toString()));
  let exited: string | null = null;
  const exitedPromise = new Promise<void>((resolve) => {
    qemu.once('exit', (code, signal) => {
      exited = `QEMU exited (${signal ?? code})${qemuStderr ? `: ${qemuStderr.trim()}` : ''}`;
      resolve();
    });
  });
  const pid = qemu.pid!;

  const serialTail = (lines = 30) => {
    try {
      return readFileSync(serial, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no serial output)';
    }
  };
  const kill = async () => {
    if (exited === null) {
      process.kill(pid, 'SIGKILL');
      await exitedPromise;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const fail = (why: string) =>
    new Error(`${why} after ${Date.now() - started} ms${exited ? `; ${exited}` : ''}\n--- serial log tail ---\n${serialTail()}`);

  try {
    const socket = await connectWithRetry(sock, deadline, () => exited, fail);
    const frames = new FrameQueue(socket);
    // The agent may not be listening yet, and HELLO may predate us: ping until a PONG comes back.
    let pongMs = -1;
    for (let id = 1; pongMs < 0; id++) {
      if (exited) throw fail('no PONG');
      if (Date.now() > deadline) throw fail('no PONG within the deadline');
      socket.write(encodeFrame(FrameType.PING, id, Buffer.from('ping')));
      const reply = await frames.next((f) => f.type === FrameType.PONG, 20);
      if (reply) pongMs = Date.now() - started;
    }
    let nextId = 1000;
    const exec: BootedGuest['exec'] = async (argv) => {
      const id = nextId++;
      socket.write(
        encodeFrame(FrameType.EXEC, id, encodeExec({ argv, env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/', uid: 0, gid: 0, stdin: false })),
      );
      let stdout = '';
      let stderr = '';
      for (;;) {
        const f = await frames.next((x) => x.id === id, Math.max(1, deadline - Date.now()));
        if (!f) throw fail(`exec ${argv.join(' ')}: no EXIT`);
        if (f.type === FrameType.STDOUT) stdout += f.payload.toString('utf8');
        else if (f.type === FrameType.STDERR) stderr += f.payload.toString('utf8');
        else if (f.type === FrameType.ERROR) throw fail(`exec ${argv.join(' ')}: agent error ${JSON.stringify(decodeError(f.payload))}`);
        else if (f.type === FrameType.EXIT) {
          const e = decodeExit(f.payload);
          return { stdout, stderr, code: e.code, signaled: e.signaled };
        }
      }
    };
    return { pid, pongMs, exec, serialTail, kill };
  } catch (err) {
    await kill();
    throw err;
  }
}

async function connectWithRetry(
  path: string,
  deadline: number,
  exited: () => string | null,
  fail: (why: string) => Error,
): Promise<Socket> {
  for (;;) {
    if (exited()) throw fail('agent socket never accepted a connection');
    if (Date.now() > deadline) throw fail('agent socket did not appear within the deadline');
    if (existsSync(path)) {
      const s = await new Promise<Socket | null>((resolve) => {
        const sock = connect(path);
        sock.once('connect', () => resolve(sock));
        sock.once('error', () => resolve(null));
      });
      if (s) return s;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Frames from the socket, taken by predicate with a timeout. */
class FrameQueue {
  private readonly frames: Frame[] = [];
  private wake: (() => void) | null = null;

  constructor(socket: Socket) {
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      this.frames.push(...decoder.push(chunk));
      this.wake?.();
    });
  }

  async next(match: (f: Frame) => boolean, timeoutMs: number): Promise<Frame | null> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const i = this.frames.findIndex(match);
      if (i >= 0) return this.frames.splice(i, 1)[0]!;
      const left = until - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }
}
