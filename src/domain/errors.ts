/**
 * Every failure a user can see carries a stable code (for programs) and a one-line message
 * (for people). The CLI prints `error: <message>` and exits non-zero; the API returns both.
 */
export const ErrorCodes = {
  INVALID_ARGUMENT: 'invalid_argument',
  NOT_FOUND: 'not_found',
  AMBIGUOUS_REF: 'ambiguous_ref',
  CONFLICT: 'conflict',
  IMAGE_NOT_FOUND: 'image_not_found',
  HOST_MISSING_DEPENDENCY: 'host_missing_dependency',
  SETUP_FAILED: 'setup_failed',
  BOOT_FAILED: 'boot_failed',
  BOOT_TIMEOUT: 'boot_timeout',
  AGENT_ERROR: 'agent_error',
  AGENT_DISCONNECTED: 'agent_disconnected',
  VM_NOT_RUNNING: 'vm_not_running',
  VM_PAUSED: 'vm_paused',
  TIMEOUT: 'timeout',
  QMP_ERROR: 'qmp_error',
  DAEMON_UNAVAILABLE: 'daemon_unavailable',
  SNAPSHOT_FAILED: 'snapshot_failed',
  INCOMPATIBLE_SNAPSHOT: 'incompatible_snapshot',
  INTERNAL: 'internal',
  DIGEST_MISMATCH: 'digest_mismatch',
  UNSAFE_ARCHIVE: 'unsafe_archive',
  REGISTRY_ERROR: 'registry_error',
  UNAUTHORIZED: 'unauthorized',
  UNSUPPORTED_MANIFEST: 'unsupported_manifest',
  SIZE_LIMIT: 'size_limit',
  READY_CHECK_FAILED: 'ready_check_failed',
  CANCELLED: 'cancelled',
  BAD_BUILD_FILE: 'bad_build_file',
  /** A VM state change the lifecycle table (domain/vm-state.ts) does not allow. */
  INVALID_STATE: 'invalid_state',
  /** The host has no room for what was asked (guest RAM on its tmpfs, ...). */
  RESOURCES_EXHAUSTED: 'resources_exhausted',
  /** The caller may not do this: not allowed to use celld, or no access to a host path it named. */
  PERMISSION_DENIED: 'permission_denied',
  /** No valid bearer token on celld's TCP listener (401). */
  UNAUTHENTICATED: 'unauthenticated',
  /** Too many requests or VM creates at once for one token (429). */
  RATE_LIMITED: 'rate_limited',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class CellError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable facts (candidates of an ambiguous ref, serial log tail, ...). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CellError';
    this.code = code;
    this.details = details;
  }
}

export function isCellError(err: unknown): err is CellError {
  return err instanceof CellError;
}

/** Wraps anything thrown into a CellError so boundaries (API, CLI) always have a code. */
export function toCellError(err: unknown): CellError {
  if (err instanceof CellError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CellError(ErrorCodes.INTERNAL, message, undefined, { cause: err });
}
