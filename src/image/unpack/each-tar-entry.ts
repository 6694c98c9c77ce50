import { ByteSource } from './byte-source.js';
import type { TarStream } from './decompress.js';
import { readTar, type ReadTarOptions, type TarEntry } from './tar-reader.js';

/**
 * Calls `onEntry` for each entry of the (decompressed) tar `stream`, in order, then reads the rest
 * (the end-of-archive blocks) and waits for the decompressor to finish cleanly. If anything fails,
 * the decompressor is stopped and the source closed before the error goes on, so no child process
 * or open file is left behind.
 */
export async function eachTarEntry(
  stream: TarStream,
  bytes: AsyncIterable<Buffer>,
  what: string,
  opts: ReadTarOptions,
  onEntry: (entry: TarEntry) => Promise<void> | void,
): Promise<void> {
  const source = new ByteSource(bytes, what);
  try {
    for await (const entry of readTar(source, what, opts)) await onEntry(entry);
    await source.drain();
    await stream.finished();
  } catch (err) {
    stream.destroy();
    await source.close().catch(() => undefined);
    throw err;
  }
}
