import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { BlobStore, BlobWriter } from '../../store/blob-store.js';
import type { Descriptor } from '../manifest.js';
import { pullScope, type RegistryClient } from './client.js';
import { errorText, registryFailure } from './transport.js';
import { backoffMs, sleep } from './retry.js';

/**
 * Downloads one blob into the blob store: refused before any byte if its declared size is over the
 * cap; every byte counted and hashed on the way (BlobWriter); a connection that breaks part-way is
 * resumed with `Range: bytes=N-` where the registry honours it (206), else restarted from 0.
 */
export interface BlobProgress {
  digest: string;
  done: number;
  total: number;
  /** `cached`: already in the store, nothing downloaded. */
  status: 'cached' | 'downloading' | 'done';
}

export interface DownloadOptions {
  what: string;
  maxBytes: number;
  onProgress?: (p: BlobProgress) => void;
  /** Called once the download starts (not for a blob already stored), e.g. to `follow` its bytes. */
  onWriter?: (writer: BlobWriter) => void;
}

export async function downloadBlob(
  client: RegistryClient,
  repository: string,
  desc: Descriptor,
  store: BlobStore,
  opts: DownloadOptions,
): Promise<string> {
  if (await store.has(desc.digest, desc.size)) {
    await store.touch(desc.digest);
    opts.onProgress?.({ digest: desc.digest, done: desc.size, total: desc.size, status: 'cached' });
    return store.path(desc.digest);
  }
  if (desc.size > opts.maxBytes) {
    throw new CellError(ErrorCodes.SIZE_LIMIT, `${opts.what} declares ${desc.size} bytes, more than the ${opts.maxBytes} allowed for one blob`, {
      size: desc.size,
      max: opts.maxBytes,
    });
  }
  const writer = await store.writer({ digest: desc.digest, size: desc.size, what: opts.what });
  opts.onWriter?.(writer);
  try {
    await fetchInto(client, repository, desc, writer, opts);
    await writer.commit();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  opts.onProgress?.({ digest: desc.digest, done: desc.size, total: desc.size, status: 'done' });
  return store.path(desc.digest);
}

async function fetchInto(client: RegistryClient, repository: string, desc: Descriptor, writer: BlobWriter, opts: DownloadOptions): Promise<void> {
  const policy = client.transport.retry;
  let lastError: unknown;
  for (let attempt = 0; attempt < policy.attempts; attempt++) {
    if (attempt > 0) await sleep(backoffMs(policy, attempt - 1), client.transport.signal);
    if (writer.bytesWritten === desc.size) return;
    const from = writer.bytesWritten;
    const res = await client.transport.request(`/v2/${repository}/blobs/${desc.digest}`, {
      scopes: [pullScope(repository)],
      headers: from > 0 ? { range: `bytes=${from}-` } : {},
    });
    if (res.status === 404) {
      await res.body?.cancel();
      throw new CellError(ErrorCodes.IMAGE_NOT_FOUND, `${opts.what}: blob ${desc.digest} not found in ${client.registry}/${repository}`);
    }
    if (res.status === 416) {
      await res.body?.cancel();
      throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${opts.what}: the registry has only ${from} of the declared ${desc.size} bytes (truncated blob)`);
    }
    if (res.status === 206) {
      const start = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1];
      if (Number(start) !== from) {
        await res.body?.cancel();
        await writer.reset();
        continue;
      }
    } else if (res.status === 200) {
      if (from > 0) await writer.reset();
      const length = res.headers.get('content-length');
      if (length !== null && Number(length) !== desc.size) {
        await res.body?.cancel();
        throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${opts.what}: the registry serves ${length} bytes, the manifest declares ${desc.size}`, {
          expectedSize: desc.size,
          actualSize: Number(length),
        });
      }
    } else {
      throw registryFailure(res, opts.what, await errorText(res));
    }
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        await writer.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        opts.onProgress?.({ digest: desc.digest, done: writer.bytesWritten, total: desc.size, status: 'downloading' });
      }
      if (writer.bytesWritten === desc.size) return;
      lastError = new Error(`connection closed after ${writer.bytesWritten} of ${desc.size} bytes`);
    } catch (err) {
      if (err instanceof CellError || client.transport.signal?.aborted) throw err;
      lastError = err;
    }
  }
  throw new CellError(
    ErrorCodes.REGISTRY_ERROR,
    `${opts.what}: download failed after ${policy.attempts} attempts (${writer.bytesWritten} of ${desc.size} bytes): ${(lastError as Error)?.message ?? 'unknown error'}`,
  );
}
