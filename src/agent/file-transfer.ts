/**
 * The multi-frame file requests of the agent protocol (docs/protocol.md, "Files"): uploads
 * (PUT_FILE, FILE_DATA..., FILE_END) and downloads (READ_FILE, LIST_DIR: DATA..., then OK).
 * AgentClient's putFile, listDir and readFile call these with its channel.
 */
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { AgentChannel } from './channel.js';
import { AgentErrorCode, FrameType } from './frame.js';
import {
  FILE_CHUNK,
  decodeDirEntries,
  encodeFileEnd,
  encodeListDir,
  encodePutFile,
  encodeReadFile,
  type GuestDirEntry,
  type PutFileMeta,
} from './file-frames.js';

/** What a transfer needs of the channel: it sends its own frames and waits for its own reply. */
export type TransferChannel = Pick<
  AgentChannel,
  'closed' | 'paused' | 'allocId' | 'send' | 'sendDrained' | 'request' | 'expectReply' | 'forgetReply' | 'listen' | 'unlisten' | 'pauseFor'
>;

/**
 * Deadlines a guest cannot stretch: how long it may take to fsync and rename an uploaded file (or
 * to list a directory), and how long a transfer may go without progress (no DATA while the reader
 * waits, no room in the socket while an upload sends). Mutable for tests.
 */
export const TRANSFER_TIMEOUTS = { confirmMs: 60_000, stallMs: 60_000 };
/** Bytes a download may queue for a slow reader before the agent connection is paused. */
const READ_HIGH_WATER = 4 * 1024 * 1024;

/**
 * The most a directory listing may hold, whatever the guest sends: entries, and bytes of entry
 * records (names and stat records). A listing is kept whole in memory, so a guest that lists
 * without end must not be able to grow celld. Far above what a real directory needs.
 */
export const LIST_LIMITS = { maxEntries: 250_000, maxBytes: 64 * 1024 * 1024 };

export async function putFile(
  channel: TransferChannel,
  path: string,
  meta: PutFileMeta,
  source: Buffer | AsyncIterable<Buffer | Uint8Array>,
): Promise<number> {
  const id = channel.allocId();
  const reply = channel.expectReply(id, `upload of ${path}`);
  let refused = false; // the guest answered before FILE_END: that can only be an ERROR
  reply.then(
    () => (refused = true),
    () => (refused = true),
  );
  // Ends the upload in the guest (its temporary file is removed); its answer is ignored.
  const cancel = () => {
    channel.forgetReply(id);
    if (!channel.closed) channel.send(FrameType.CANCEL, id);
  };
  channel.send(FrameType.PUT_FILE, id, encodePutFile(path, meta));
  let size = 0;
  try {
    for await (const chunk of chunksOf(source, FILE_CHUNK)) {
      if (refused) break;
      await channel.sendDrained(FrameType.FILE_DATA, id, chunk, TRANSFER_TIMEOUTS.stallMs);
      size += chunk.length;
    }
  } catch (err) {
    cancel();
    throw err;
  }
  if (refused) {
    cancel();
    await reply; // throws the guest's ERROR
    return size;
  }
  channel.send(FrameType.FILE_END, id, encodeFileEnd(size));
  await withTimeout(reply, TRANSFER_TIMEOUTS.confirmMs, () => channel.forgetReply(id), `the guest did not confirm the upload of ${path}`);
  return size;
}

export async function listDir(
  channel: TransferChannel,
  path: string,
  limits: { maxEntries?: number; maxBytes?: number } = {},
): Promise<GuestDirEntry[]> {
  const maxEntries = limits.maxEntries ?? LIST_LIMITS.maxEntries;
  const maxBytes = limits.maxBytes ?? LIST_LIMITS.maxBytes;
  const id = channel.allocId();
  const entries: GuestDirEntry[] = [];
  let bytes = 0;
  // The first thing wrong with what the guest sent; the rest of its frames are ignored.
  let failure: CellError | null = null;
  let fail!: (err: CellError) => void;
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => {});
  const stop = (err: CellError) => {
    if (failure) return;
    failure = err;
    channel.unlisten(id);
    fail(err);
  };
  channel.listen(id, (frame) => {
    if (frame.type !== FrameType.DATA || failure) return;
    bytes += frame.payload.length;
    let got: GuestDirEntry[];
    try {
      got = decodeDirEntries(frame.payload);
    } catch {
      stop(new CellError(ErrorCodes.AGENT_ERROR, `the guest sent a listing of ${path} that does not parse`));
      return;
    }
    if (entries.length + got.length > maxEntries || bytes > maxBytes) {
      stop(
        new CellError(
          ErrorCodes.SIZE_LIMIT,
          `the listing of ${path} has more than ${maxEntries} entries or ${maxBytes} bytes of them: refused (a directory that large, or a guest that lists without end)`,
          { path, maxEntries, maxBytes },
        ),
      );
      return;
    }
    for (const e of got) entries.push(e);
  });
  const reply = channel.request(FrameType.LIST_DIR, encodeListDir(path), id, TRANSFER_TIMEOUTS.confirmMs);
  try {
    const ok = await Promise.race([reply, failed]);
    if (failure) throw failure;
    // OK carries the number of entries sent: a mismatch means frames were lost or forged.
    if (ok.payload.length === 4 && ok.payload.readUInt32BE(0) !== entries.length) {
      throw new CellError(ErrorCodes.AGENT_ERROR, `the guest listed ${entries.length} entries of ${path} but said it sent ${ok.payload.readUInt32BE(0)} entries`);
    }
  } catch (err) {
    if (failure) {
      // Stop the guest sending (its late replies are ignored).
      reply.catch(() => {});
      channel.forgetReply(id);
      if (!channel.closed) channel.send(FrameType.CANCEL, id);
      throw failure;
    }
    throw err;
  } finally {
    channel.unlisten(id);
  }
  return entries;
}

/**
 * Yields the DATA chunks of a READ_FILE as they arrive, and returns once the guest's OK came.
 * Chunks queue while the reader is busy; past READ_HIGH_WATER the connection is paused.
 * `maxBytes` (0: no limit) is enforced here as well as asked of the guest: bytes past it are
 * never handed out, the download is cancelled and the read fails with size_limit. The OK's size
 * must match the bytes sent.
 */
export async function* readFile(channel: TransferChannel, path: string, maxBytes: number): AsyncGenerator<Buffer> {
  const id = channel.allocId();
  const queue: Buffer[] = [];
  let queued = 0;
  let received = 0;
  let finished = false;
  let failure: Error | null = null;
  // The failure is ours (not the guest's ERROR): the guest is still sending and must be told to stop.
  let cancel = false;
  let wake: (() => void) | null = null;
  const poke = () => {
    wake?.();
    wake = null;
  };
  const stop = (err: Error) => {
    if (failure || finished) return;
    failure = err;
    cancel = true;
    channel.unlisten(id);
    poke();
  };
  channel.listen(id, (frame) => {
    if (frame.type !== FrameType.DATA || failure) return;
    const chunk = frame.payload;
    received += chunk.length;
    if (maxBytes > 0 && received > maxBytes) {
      stop(new CellError(ErrorCodes.SIZE_LIMIT, `${path} is larger than the ${maxBytes} bytes allowed (the guest sent more)`, { path, maxBytes }));
      return;
    }
    queue.push(chunk);
    queued += chunk.length;
    if (queued > READ_HIGH_WATER) channel.pauseFor(id, true);
    poke();
  });
  channel.expectReply(id, `download of ${path}`).then(
    (ok) => {
      if (failure) return;
      // DATA frames all come before their OK: `received` is what the guest sent.
      const said = ok.payload.length === 8 ? ok.payload.readBigUInt64BE(0) : null;
      if (said !== null && said !== BigInt(received)) {
        failure = new CellError(ErrorCodes.AGENT_ERROR, `the guest sent ${received} bytes of ${path} but said it sent ${said}`, { path });
      } else finished = true;
      poke();
    },
    (err: Error) => {
      if (!failure) failure = sizeLimitFor(err, path);
      poke();
    },
  );
  try {
    channel.send(FrameType.READ_FILE, id, encodeReadFile(path, maxBytes));
    for (;;) {
      // A failure of ours comes first: nothing past the limit is handed out.
      if (failure && cancel) throw failure;
      const chunk = queue.shift();
      if (chunk) {
        queued -= chunk.length;
        if (queued <= READ_HIGH_WATER / 2) channel.pauseFor(id, false);
        yield chunk;
        continue;
      }
      if (failure) throw failure;
      if (finished) return;
      // The reader waits for the guest: a guest that sends nothing for stallMs is given up on
      // (unless the connection is paused for another, slower reader: then nothing can arrive).
      const stallMs = TRANSFER_TIMEOUTS.stallMs;
      let timer: NodeJS.Timeout | undefined;
      const woken = await new Promise<boolean>((resolve) => {
        wake = () => resolve(true);
        timer = setTimeout(() => resolve(false), stallMs);
      });
      clearTimeout(timer);
      if (!woken) {
        wake = null;
        if (!channel.paused) stop(new CellError(ErrorCodes.TIMEOUT, `the guest sent nothing of ${path} for ${stallMs / 1000} s`, { path }));
      }
    }
  } finally {
    channel.unlisten(id);
    channel.pauseFor(id, false);
    if ((!finished && !failure) || cancel) {
      // The reader stopped early, or the guest sent more than asked for: stop the guest sending.
      channel.forgetReply(id);
      if (!channel.closed) channel.send(FrameType.CANCEL, id);
    }
  }
}

/** `source` in pieces of at most `size` bytes (FILE_DATA frames). */
async function* chunksOf(source: Buffer | AsyncIterable<Buffer | Uint8Array>, size: number): AsyncGenerator<Buffer> {
  const pieces = (b: Buffer) => Array.from({ length: Math.ceil(b.length / size) }, (_, i) => b.subarray(i * size, (i + 1) * size));
  if (Buffer.isBuffer(source)) {
    yield* pieces(source);
    return;
  }
  for await (const chunk of source) yield* pieces(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk));
}

/** A download refused for its size (agent LIMIT) is a size_limit error. */
function sizeLimitFor(err: Error, path: string): Error {
  if (err instanceof CellError && err.details?.agentCode === AgentErrorCode.LIMIT) {
    return new CellError(ErrorCodes.SIZE_LIMIT, err.message, { ...err.details, path });
  }
  return err;
}

function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => void, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new CellError(ErrorCodes.TIMEOUT, `${message} within ${ms / 1000} s`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
