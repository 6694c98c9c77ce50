import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { Db } from '../../store/database.js';
import { BlobStore } from '../../store/blob-store.js';
import { checkDigest, digestHex, type Digest } from '../digest.js';
import { parseManifest } from '../manifest.js';
import { MediaTypes } from '../media-types.js';
import { formatReference, parseReference } from '../reference.js';
import { TAR_END, tarHeader, tarPadding, writeAll } from './tar-writer.js';

/**
 * Writes a recorded image as an OCI-layout tar (`oci-layout`, `index.json`, `blobs/sha256/...`),
 * the format `importArchive`, `skopeo copy oci-archive:` and `umoci` read. The index names the
 * image (`io.containerd.image.name`, and the tag as `org.opencontainers.image.ref.name`). Written
 * to a temp file beside `file` and renamed, so a failed export leaves no half archive.
 */
export async function exportImage(opts: {
  reference: string;
  file: string;
  storeRoot: string;
  db: Db;
  /** Write into this existing empty file instead (its owner then renames it to `file`). */
  writeTo?: string;
}): Promise<{ digest: Digest; bytes: number }> {
  const ref = formatReference(parseReference(opts.reference));
  const row = opts.db.prepare('SELECT reference, digest FROM images WHERE reference = ? OR reference = ?').get(ref, opts.reference) as
    | { reference: string; digest: string }
    | undefined;
  if (!row) throw new CellError(ErrorCodes.IMAGE_NOT_FOUND, `no local image ${opts.reference}`);
  const store = new BlobStore(opts.storeRoot);
  const digest = checkDigest(row.digest, `image ${row.reference}`);
  if (!(await store.has(digest))) {
    throw new CellError(ErrorCodes.NOT_FOUND, `image ${row.reference} has no manifest in the blob store (a built-in image cannot be exported)`);
  }
  const manifestBytes = await store.read(digest);
  const manifest = parseManifest(manifestBytes, `manifest of ${row.reference}`);
  if (manifest.kind !== 'manifest') throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `image ${row.reference} records an index, not a manifest`);
  const blobs = [digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
  const tag = parseReference(row.reference).tag;
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.OCI_INDEX,
      manifests: [
        {
          mediaType: manifest.mediaType,
          digest,
          size: manifestBytes.length,
          annotations: { 'io.containerd.image.name': row.reference, ...(tag ? { 'org.opencontainers.image.ref.name': tag } : {}) },
        },
      ],
    }),
  );

  const tmp = opts.writeTo ?? join(dirname(opts.file), `.${basename(opts.file)}.${randomBytes(4).toString('hex')}.tmp`);
  const out = createWriteStream(tmp, { flags: opts.writeTo ? 'r+' : 'wx', mode: 0o644 });
  try {
    const small = async (path: string, data: Buffer): Promise<void> => {
      await writeAll(out, tarHeader({ path, type: 'file', size: data.length }));
      await writeAll(out, data);
      await writeAll(out, tarPadding(data.length));
    };
    await small('oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}'));
    await small('index.json', index);
    await writeAll(out, tarHeader({ path: 'blobs/', type: 'dir' }));
    await writeAll(out, tarHeader({ path: 'blobs/sha256/', type: 'dir' }));
    for (const d of new Set(blobs)) {
      const size = await store.size(d);
      if (size === undefined) throw new CellError(ErrorCodes.NOT_FOUND, `blob ${d} of ${row.reference} is missing from the blob store`);
      await writeAll(out, tarHeader({ path: `blobs/sha256/${digestHex(d as Digest)}`, type: 'file', size }));
      for await (const chunk of createReadStream(store.path(d))) await writeAll(out, chunk as Buffer);
      await writeAll(out, tarPadding(size));
    }
    await writeAll(out, TAR_END);
    out.end();
    await once(out, 'finish');
    if (!opts.writeTo) {
      const fh = await open(tmp, 'r');
      await fh.sync().finally(() => fh.close());
      await rename(tmp, opts.file);
    }
  } catch (err) {
    out.destroy();
    if (!opts.writeTo) await rm(tmp, { force: true });
    throw err;
  }
  return { digest, bytes: out.bytesWritten };
}
