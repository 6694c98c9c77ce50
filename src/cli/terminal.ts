import { UsageError } from './errors.js';

/** A terminal's size in character cells. */
export interface TerminalSize {
  cols: number;
  rows: number;
}

/** What `-t` needs of the host's terminal (process.stdin / process.stdout, or a test double). */
export interface HostTty {
  stdin: { isTTY?: boolean; setRawMode?(raw: boolean): unknown };
  stdout: { isTTY?: boolean; columns?: number; rows?: number; on(event: 'resize', fn: () => void): unknown; off(event: 'resize', fn: () => void): unknown };
}

const FALLBACK: TerminalSize = { cols: 80, rows: 24 };
const MAX_DIM = 1000;

/**
 * docker's rule for `-it`: typing into a terminal needs one. `-t` alone (output on a terminal,
 * no input) works from anywhere, as it does with docker.
 */
export function checkTtyFlags(flags: { tty?: boolean; interactive?: boolean }, host: HostTty): void {
  if (flags.tty && flags.interactive && !host.stdin.isTTY) throw new UsageError('the input device is not a TTY');
}

/** The host terminal's size (80x24 when stdout is no terminal), held to what the guest takes. */
export function hostSize(host: HostTty): TerminalSize {
  const clamp = (v: number | undefined, fallback: number) => (v && v > 0 ? Math.min(Math.floor(v), MAX_DIM) : fallback);
  if (!host.stdout.isTTY) return { ...FALLBACK };
  return { cols: clamp(host.stdout.columns, FALLBACK.cols), rows: clamp(host.stdout.rows, FALLBACK.rows) };
}

/**
 * Puts the host's terminal in raw mode (every key, Ctrl-C included, goes to the guest as a byte;
 * the guest's terminal echoes and interprets them) and passes its size changes on. `restore()`
 * undoes both and is safe to call more than once; it also runs when the process exits, whatever
 * the path (an exception, process.exit).
 */
export function rawTerminal(host: HostTty, onResize: (size: TerminalSize) => void): { restore(): void } {
  const raw = Boolean(host.stdin.isTTY && host.stdin.setRawMode);
  if (raw) host.stdin.setRawMode!(true);
  const resized = () => onResize(hostSize(host));
  if (host.stdout.isTTY) host.stdout.on('resize', resized);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    host.stdout.off('resize', resized);
    if (raw) host.stdin.setRawMode!(false);
    process.off('exit', restore);
  };
  process.on('exit', restore);
  return { restore };
}

/**
 * Docker's detach keys (`--detach-keys`, default Ctrl-P Ctrl-Q): a sequence typed into an attached
 * session ends the session, not the program. A prefix of the sequence is held back until the next
 * byte shows whether it is one; anything else goes to the guest as typed.
 */
export class DetachKeys {
  private held = 0;

  constructor(private readonly keys: readonly number[] = [0x10, 0x11]) {}

  /** Splits typed bytes into what goes on to the guest and whether the sequence was completed. */
  feed(chunk: Buffer): { send: Buffer; detach: boolean } {
    const out: number[] = [];
    for (const byte of chunk) {
      if (byte === this.keys[this.held]) {
        this.held++;
        if (this.held === this.keys.length) return { send: Buffer.from(out), detach: true };
        continue;
      }
      out.push(...this.keys.slice(0, this.held));
      this.held = 0;
      if (byte === this.keys[0]) this.held = 1;
      else out.push(byte);
    }
    return { send: Buffer.from(out), detach: false };
  }
}

/** `--detach-keys ctrl-p,ctrl-q` (docker's syntax: ctrl-<letter>, ctrl-@, ctrl-[ ... or a single character). */
export function parseDetachKeys(text: string): number[] {
  const keys = text.split(',').map((key) => {
    const ctrl = /^ctrl-(.)$/i.exec(key.trim());
    if (ctrl) {
      const code = ctrl[1]!.toUpperCase().charCodeAt(0);
      if (code >= 0x40 && code <= 0x5f) return code - 0x40;
    } else if (key.length === 1) return key.charCodeAt(0);
    throw new UsageError(`--detach-keys: "${key}" is not a key: give ctrl-<letter> or one character, comma-separated (ctrl-p,ctrl-q)`);
  });
  if (keys.length === 0 || keys.length > 8) throw new UsageError('--detach-keys: give 1 to 8 keys');
  return keys;
}
