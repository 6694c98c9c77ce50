import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { digestHex, type Digest } from './digest.js';

/**
 * Where image content lives under the store root (CELL_HOME): blobs in `blobs/sha256/`, one base
 * disk per image digest in `images/<hex>.ext4`, and work dirs (unpack staging) in `tmp/`, all on
 * one file system so every publish is a rename.
 */
export function imagesDir(storeRoot: string): string {
  return join(storeRoot, 'images');
}

export function diskPathFor(storeRoot: string, imageDigest: Digest): string {
  return join(imagesDir(storeRoot), `${digestHex(imageDigest)}.ext4`);
}

export function workDir(storeRoot: string): string {
  return join(storeRoot, 'tmp');
}

/**
 * A short tag for a store root, in the names of what it stages outside itself (tmpfs unpack dirs
 * in /dev/shm, shared by every CELL_HOME): a starting celld sweeps its own and no one else's.
 */
export function storeTag(storeRoot: string): string {
  return createHash('sha256').update(storeRoot).digest('hex').slice(0, 12);
}
