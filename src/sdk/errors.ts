import { CellError, ErrorCodes, type ErrorCode } from '../domain/errors.js';

/**
 * Error tests, so callers never compare `err.code` strings by hand:
 *
 *   try { await client.vms.get('box'); } catch (err) { if (isNotFound(err)) ...; else throw err; }
 */

/** True when `err` is a CellError with this code. */
export function hasErrorCode(err: unknown, code: ErrorCode): err is CellError {
  return err instanceof CellError && err.code === code;
}

const is = (code: ErrorCode) => (err: unknown): err is CellError => hasErrorCode(err, code);

/** No such VM, snapshot, template, exec or guest path. */
export const isNotFound = is(ErrorCodes.NOT_FOUND);
export const isImageNotFound = is(ErrorCodes.IMAGE_NOT_FOUND);
/** A reference (id prefix or name) matched more than one thing; `details` lists the candidates. */
export const isAmbiguousRef = is(ErrorCodes.AMBIGUOUS_REF);
export const isConflict = is(ErrorCodes.CONFLICT);
export const isInvalidArgument = is(ErrorCodes.INVALID_ARGUMENT);
export const isVmNotRunning = is(ErrorCodes.VM_NOT_RUNNING);
export const isIncompatibleSnapshot = is(ErrorCodes.INCOMPATIBLE_SNAPSHOT);
/** The VM's lifecycle does not allow that step from its current state (`details.from`, `details.allowed`). */
export const isInvalidState = is(ErrorCodes.INVALID_STATE);
/** The host had no room for it (guest RAM on its tmpfs, ...); `details` has the numbers. */
export const isResourcesExhausted = is(ErrorCodes.RESOURCES_EXHAUSTED);
/** celld is not running and could not be started, or the connection to it broke. */
export const isDaemonUnavailable = is(ErrorCodes.DAEMON_UNAVAILABLE);
/** `details.serialTail` holds the guest console's last lines. */
export const isBootFailed = is(ErrorCodes.BOOT_FAILED);
export const isSizeLimit = is(ErrorCodes.SIZE_LIMIT);
export const isUnauthorized = is(ErrorCodes.UNAUTHORIZED);
export const isBadBuildFile = is(ErrorCodes.BAD_BUILD_FILE);
export const isCancelled = is(ErrorCodes.CANCELLED);

/** The call was cancelled by its signal or ran past its `timeoutMs` (not a CellError: the caller's doing). */
export function isAbortError(err: unknown): err is Error {
  return err instanceof Error && (err.name === 'AbortError' || err.name === 'TimeoutError');
}
