import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * Content digests as OCI writes them (`sha256:<64 hex>`). Only sha256 is accepted: it is what every
 * registry produces, and a strict format keeps a digest safe to use as a file name.
 */
const SHA256 = /^sha256:([a-f0-9]{64})$/;

export type Digest = `sha256:${string}`;

export function isDigest(value: unknown): value is Digest {
  return typeof value === 'string' && SHA256.test(value);
}

/** Returns the digest unchanged, or throws naming `what` if it is not a sha256 digest we accept. */
export function checkDigest(value: unknown, what: string): Digest {
  if (isDigest(value)) return value;
  const shown = typeof value === 'string' ? value.slice(0, 100) : String(value);
  const algo = typeof value === 'string' && value.includes(':') ? value.split(':')[0] : undefined;
  if (algo && algo !== 'sha256') {
    throw new CellError(ErrorCodes.UNSUPPORTED_MANIFEST, `${what}: digest algorithm ${algo} is not supported (only sha256): ${shown}`);
  }
  throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${what}: not a valid sha256 digest: ${shown}`);
}

export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

export function sha256Digest(data: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** The digest of a file's bytes, read as a stream. */
export async function fileDigest(path: string): Promise<Digest> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

export function digestMismatch(what: string, expected: string, actual: string): CellError {
  return new CellError(ErrorCodes.DIGEST_MISMATCH, `${what}: content digest ${actual} does not match the expected ${expected}`, {
    expected,
    actual,
  });
}
