import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** native/host-creds.c, built by `npm run build` into dist/native (see that file for why it exists). */
export interface HostCreds {
  peerCredentials(fd: number): { pid: number; uid: number; gid: number };
  withFsCredentials<T>(uid: number, gid: number, groups: number[], fn: () => T): T;
}

/** Where the build puts the addon: two folders up from this module, in src/ and in dist/ alike. */
export const HOST_CREDS_ADDON = fileURLToPath(new URL('../../dist/native/host-creds.node', import.meta.url));

let loaded: HostCreds | null | undefined;

/** The addon, or null when it was not built (or cannot load on this host). Loaded once. */
export function hostCreds(): HostCreds | null {
  if (loaded !== undefined) return loaded;
  try {
    loaded = existsSync(HOST_CREDS_ADDON) ? (createRequire(import.meta.url)(HOST_CREDS_ADDON) as HostCreds) : null;
  } catch {
    loaded = null;
  }
  return loaded;
}
