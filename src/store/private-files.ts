import { chmodSync, chownSync, closeSync, constants, fchmodSync, lstatSync, mkdirSync, openSync, rmSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * What only celld's user may see: CELL_HOME (the database holds env values, the logs a guest's
 * output, snapshots a guest's RAM) and the guests' RAM folder on tmpfs. Folders are 0700, files
 * 0600. A folder someone else made first, or could write to, is refused rather than used: on a
 * shared /dev/shm anyone can create `cellvm-<hash>` before celld does.
 */
export const PRIVATE_DIR_MODE = 0o700;
export const PRIVATE_FILE_MODE = 0o600;

function myUid(): number {
  return process.geteuid?.() ?? process.getuid?.() ?? 0;
}

function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function refuse(what: string, path: string, why: string, st: Stats | null, fix: string): CellError {
  const facts = st ? ` (owner uid ${st.uid}, mode ${octal(st.mode)})` : '';
  return new CellError(ErrorCodes.SETUP_FAILED, `refusing to use ${what} ${path}: ${why}${facts}; ${fix}`, {
    path,
    ...(st ? { ownerUid: st.uid, mode: octal(st.mode) } : {}),
    uid: myUid(),
  });
}

/** mkdir with exactly `mode` (the umask may narrow what mkdir gets); false when it already existed. */
function makeDir(path: string, mode: number): boolean {
  mkdirSync(dirname(path), { recursive: true });
  try {
    mkdirSync(path, { mode });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  chmodSync(path, mode);
  return true;
}

/**
 * A folder only we may use, made 0700 when missing. An existing one must be a real folder (not a
 * symlink) owned by our uid that nobody else could write to, or it is refused: its contents may
 * have been planted by whoever could get in. One that others could only read is narrowed to 0700.
 */
export function ensurePrivateDir(path: string, what: string, removeWhen = ''): void {
  makeDir(path, PRIVATE_DIR_MODE);
  const st = lstatSync(path);
  const fix = `remove it${removeWhen} or, if it is yours, make it private (chown ${myUid()} and chmod 700 it)`;
  if (st.isSymbolicLink()) throw refuse(what, path, 'it is a symlink', st, `remove it`);
  if (!st.isDirectory()) throw refuse(what, path, 'it is not a folder', st, 'remove it');
  if (st.uid !== myUid()) throw refuse(what, path, `it is owned by another user, not by celld's uid ${myUid()}`, st, fix);
  // Writable by others: anything in it may have been planted. Readable only (what an older celld
  // made): nobody else could put anything in, so narrowing it is safe and upgrades just work.
  if ((st.mode & 0o022) !== 0) throw refuse(what, path, 'other users may write to it (group or world write bits)', st, fix);
  if ((st.mode & 0o077) !== 0) chmodSync(path, PRIVATE_DIR_MODE);
}

/**
 * A folder of ours inside a private parent (vms/, snapshots/, spares/): made 0700, or narrowed to
 * 0700 when an older version left it open (nothing could get in through its private parent).
 */
export function ensureOwnDir(path: string, what: string): void {
  if (makeDir(path, PRIVATE_DIR_MODE)) return;
  const st = lstatSync(path);
  if (st.isSymbolicLink() || !st.isDirectory()) throw refuse(what, path, st.isSymbolicLink() ? 'it is a symlink' : 'it is not a folder', st, 'remove it');
  if (st.uid !== myUid()) throw refuse(what, path, `it is owned by another user, not by celld's uid ${myUid()}`, st, `chown ${myUid()} it or remove it`);
  if ((st.mode & 0o077) !== 0) chmodSync(path, PRIVATE_DIR_MODE);
}

/**
 * CELL_HOME: made 0700 when missing; refused when it (or the symlink naming it) belongs to another
 * user; otherwise narrowed to at most 0710. `group` (the socket's group, see server/main.ts) makes
 * it 0710 with that group, so the group's members can reach celld.sock and nothing else; null
 * makes it 0700; undefined keeps a group search bit already there.
 */
export function ensureCellHome(home: string, group?: number | null): void {
  makeDir(home, PRIVATE_DIR_MODE);
  const link = lstatSync(home);
  const fix = `run celld as that user, or give it its own CELL_HOME`;
  if (link.isSymbolicLink() && link.uid !== myUid() && link.uid !== 0) {
    throw refuse('CELL_HOME', home, 'it is a symlink owned by another user', link, fix);
  }
  const st = statSync(home);
  if (!st.isDirectory()) throw refuse('CELL_HOME', home, 'it is not a folder', st, 'remove it or point CELL_HOME elsewhere');
  if (st.uid !== myUid()) throw refuse('CELL_HOME', home, `it is owned by another user, not by celld's uid ${myUid()}`, st, fix);
  const groupSearch = group === undefined ? st.mode & 0o010 : group === null ? 0 : 0o010;
  if (group !== undefined && group !== null && st.gid !== group) chownSync(home, st.uid, group);
  if ((st.mode & 0o7777) !== (PRIVATE_DIR_MODE | groupSearch)) chmodSync(home, PRIVATE_DIR_MODE | groupSearch);
}

/** Narrows an existing file of ours to 0600 (files an older version created 0644); absent is fine. */
export function narrowFileMode(path: string): void {
  const st = lstatOrNull(path);
  if (!st || !st.isFile() || st.uid !== myUid()) return;
  if ((st.mode & 0o077) !== 0) chmodSync(path, PRIVATE_FILE_MODE);
}

/** Creates `path` 0600 if missing (never through a symlink) and narrows it to 0600 if present. */
export function ensurePrivateFile(path: string): void {
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, PRIVATE_FILE_MODE));
    chmodSync(path, PRIVATE_FILE_MODE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const st = lstatSync(path);
    if (st.isSymbolicLink()) throw refuse('file', path, 'it is a symlink', st, 'remove it');
    narrowFileMode(path);
  }
}

/**
 * A new, empty 0600 file at `path`, created exclusively: whatever was there (a stale file, or a
 * symlink someone planted to redirect our writes) is removed first, never followed. Returns the
 * open descriptor (write-only); the caller closes it.
 */
export function createPrivateFile(path: string): number {
  rmSync(path, { force: true });
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, PRIVATE_FILE_MODE);
  fchmodSync(fd, PRIVATE_FILE_MODE);
  return fd;
}

/**
 * A folder others must not be able to write to (the host cache, where set-up downloads and builds
 * what root then runs): owned by us or root, and not group or world writable unless sticky. One
 * of ours is narrowed (go-w); anyone else's is refused.
 */
export function ensureNotWritableByOthers(path: string, what: string): void {
  const st = statSync(path);
  const ownerOk = st.uid === myUid() || st.uid === 0;
  const open = (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0;
  if (ownerOk && !open) return;
  if (st.uid === myUid()) {
    chmodSync(path, st.mode & 0o7755);
    return;
  }
  throw refuse(what, path, ownerOk ? 'other users may write to it' : `it is owned by another user, not by uid ${myUid()} or root`, st, `chown ${myUid()} it and chmod go-w it, or remove it`);
}
