import { bytes } from './format.js';

/**
 * A snapshot push or pull as one bar on stderr when it is a terminal (bytes of its blobs dealt
 * with, of all, and the rate); nothing otherwise: the result line on stdout says what moved.
 */
export async function transferProgress(label: string): Promise<{ onProgress: (done: number, total: number) => void; stop: () => void }> {
  if (!process.stderr.isTTY) return { onProgress: () => {}, stop: () => {} };
  const { default: cliProgress } = await import('cli-progress');
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      clearOnComplete: true,
      hideCursor: true,
      format: `${label} [{bar}] {percentage}% {doneText}/{totalText} {speed}`,
    },
    cliProgress.Presets.shades_classic,
  );
  const started = Date.now();
  let shown = false;
  return {
    onProgress: (done, total) => {
      const payload = { doneText: bytes(done), totalText: bytes(total), speed: `${bytes(done / Math.max(0.001, (Date.now() - started) / 1000))}/s` };
      if (!shown) {
        bar.start(Math.max(1, total), done, payload);
        shown = true;
      } else bar.update(done, payload);
    },
    stop: () => {
      if (shown) bar.stop();
    },
  };
}
