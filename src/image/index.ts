/** The image layer's public surface: what the engine calls. */
export { pullImage, DEFAULT_MAX_BLOB_BYTES, DEFAULT_CONCURRENCY, type PullOptions, type PulledImage } from './pull.js';
export { pushImage, type PushOptions } from './push.js';
export { importArchive, type ImportOptions } from './archive/import.js';
export { exportImage } from './archive/export.js';
export { collectGarbage, evictImages, removeImageReference, sweepImageStore, DEFAULT_GC_GRACE_MS, type GcResult } from './gc.js';
export { login, logout } from './registry/login.js';
export { parseReference, formatReference, type ImageReference } from './reference.js';
export { parsePlatform, formatPlatform, DEFAULT_PLATFORM, type Platform } from './platform.js';
export type { PullProgress, PullProgressFn } from './progress.js';
export type { InstalledImage } from './install.js';
export { diskPathFor } from './store-layout.js';
