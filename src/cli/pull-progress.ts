import type { PullEvent } from '../sdk/commands.js';
import { bytes } from './format.js';

/**
 * Pull progress: one bar per layer (bytes, rate) on a terminal, plain lines otherwise, nothing
 * with --quiet. Everything goes to stderr so stdout stays the result.
 */
export async function pullProgress(quiet: boolean): Promise<{ onProgress: (e: PullEvent) => void; stop: () => void }> {
  if (quiet) return { onProgress: () => {}, stop: () => {} };
  if (!process.stderr.isTTY) {
    return {
      onProgress: (e) => {
        const line = pullLine(e);
        if (line) process.stderr.write(line + '\n');
      },
      stop: () => {},
    };
  }
  const { default: cliProgress } = await import('cli-progress');
  const multibar = new cliProgress.MultiBar(
    {
      stream: process.stderr,
      clearOnComplete: false,
      hideCursor: true,
      format: '{id} [{bar}] {percentage}% {done}/{size} {speed}',
      formatValue: (v, _o, type) => (type === 'value' || type === 'total' ? bytes(v) : String(v)),
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, { bar: ReturnType<typeof multibar.create>; started: number }>();
  return {
    onProgress: (e) => {
      if (e.phase === 'blob') {
        const digest = String(e.digest);
        const total = Number(e.total) || 1;
        const done = Number(e.done) || 0;
        let entry = bars.get(digest);
        if (!entry) {
          entry = { bar: multibar.create(total, 0, { id: digest.slice(7, 19), done: bytes(0), size: bytes(total), speed: '' }), started: Date.now() };
          bars.set(digest, entry);
        }
        const secs = Math.max(0.001, (Date.now() - entry.started) / 1000);
        const speed = e.status === 'cached' ? 'cached' : `${bytes(done / secs)}/s`;
        entry.bar.update(e.status === 'cached' ? total : done, { done: bytes(done), size: bytes(total), speed });
      } else {
        const line = pullLine(e);
        if (line) multibar.log(line + '\n');
      }
    },
    stop: () => multibar.stop(),
  };
}

export function pullLine(e: PullEvent): string | undefined {
  switch (e.phase) {
    case 'resolved':
      return `resolved ${String(e.reference)} to ${String(e.digest).slice(0, 19)}`;
    case 'blob':
      return e.status === 'downloading' ? undefined : `${String(e.digest).slice(7, 19)}: ${e.status === 'cached' ? 'already here' : 'downloaded'} (${bytes(Number(e.total))})`;
    case 'unpack':
      return `unpacking layer ${String(e.layer)}/${String(e.layers)}`;
    case 'disk':
      return e.status === 'cached' ? 'base disk already built' : 'building the base disk';
    default:
      return undefined;
  }
}
