import type { SetupEvent } from '../sdk/commands.js';
import { elapsed, setupLine } from './format.js';

const FRAMES = '⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏';
const TICK_MS = 100;

export interface SetupProgress {
  onProgress(e: SetupEvent): void;
  /** A line of its own among the progress (e.g. pull messages). */
  line(text: string): void;
  /** Clears the live line; safe to call more than once. */
  stop(): void;
}

/**
 * Host set-up progress on `out` (stderr): one plain line per event; on a terminal also a live last
 * line with a spinner and the running steps' elapsed times (set-up can take minutes).
 */
export function setupProgress(out: NodeJS.WriteStream = process.stderr): SetupProgress {
  const running = new Map<string, number>();
  const tty = out.isTTY === true;
  let frame = 0;
  let timer: NodeJS.Timeout | undefined;
  let shown = false;

  const clear = () => {
    if (shown) out.write('\r\x1b[2K');
    shown = false;
  };
  const draw = () => {
    if (running.size === 0) return clear();
    const now = Date.now();
    const steps = [...running].map(([step, started]) => `${step} ${elapsed(now - started)}`).join(' · ');
    const text = `${FRAMES[frame++ % FRAMES.length]} ${steps}`;
    out.write(`\r\x1b[2K${text.slice(0, Math.max(20, (out.columns ?? 80) - 1))}`);
    shown = true;
  };
  const print = (text: string) => {
    clear();
    out.write(`${text}\n`);
    if (tty) draw();
  };

  return {
    onProgress(e) {
      const started = running.get(e.step);
      if (e.status === 'start') running.set(e.step, Date.now());
      else running.delete(e.step);
      print(setupLine(e, e.status === 'done' && started !== undefined ? Date.now() - started : undefined));
      if (tty && running.size > 0 && !timer) {
        timer = setInterval(draw, TICK_MS);
        timer.unref();
      }
      if (running.size === 0 && timer) {
        clearInterval(timer);
        timer = undefined;
      }
    },
    line: print,
    stop() {
      if (timer) clearInterval(timer);
      timer = undefined;
      running.clear();
      clear();
    },
  };
}
