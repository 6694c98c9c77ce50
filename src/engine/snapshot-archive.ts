import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { archivedParent, MAX_ARCHIVE_META_BYTES, parseArchiveMeta, SNAPSHOT_ARCHIVE_FORMAT } from '../domain/snapshot-archive.js';
import type { CellPaths } from '../domain/paths.js';
import type { EngineContext } from './context.js';
import { clonedMemoryBytes, dropCloneNote, parentMemory, storeMemory } from './snapshot-memory.js';
import { allocatedBytes } from '../host/files.js';
import { CELLD_HOST_FS, hostPathError, writeHostFile, type HostFs } from './host-fs.js';
import { ArchiveBudget } from '../image/archive/archive-budget.js';
import { scanArchive } from '../image/archive/scan-archive.js';
import { explainNoSpace } from '../image/free-space.js';

const run = promisify(execFile);
const FORMAT = SNAPSHOT_ARCHIVE_FORMAT;
const MEMBERS = ['snapshot.json', 'state', 'memory', 'disk.qcow2'];
/** Present when the VM had a data disk. */
const DATA_MEMBER = 'data.qcow2';

interface ArchiveMeta {
  format: string;
  snapshot: SnapshotRecord;
}

/** Runs a host tool; its last line of stderr becomes the error (`snapshot_failed`). */
export async function tool(cmd: string, args: string[], what: string): Promise<void> {
  try {
    await run(cmd, args, { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const stderr = ((err as { stderr?: string }).stderr ?? '').trim().split('\n').pop();
    throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what}: ${stderr || (err as Error).message}`);
  }
}

/** A disk layer and its backing chain as one standalone qcow2 (the chain names files of this host only). */
export function flattenDisk(from: string, to: string, what: string): Promise<void> {
  return tool('qemu-img', ['convert', '-O', 'qcow2', from, to], `flattening ${what} failed`);
}

/**
 * Writes a snapshot to one tar file another host can import: its metadata, device state, the RAM
 * file written out in full (tar's sparse mode keeps the archive small), and its disk flattened
 * into one standalone qcow2 (the backing chain names paths that exist only on this host).
 */
export async function exportSnapshot(paths: CellPaths, snapshot: SnapshotRecord, file: string, host: HostFs = CELLD_HOST_FS): Promise<{ bytes: number }> {
  const src = paths.snapshotDir(snapshot.id);
  // Staged in celld's own folder (swept at start-up if celld dies here); only the archive is the caller's.
  const work = await mkdtemp(join(paths.snapshots, '.export-'));
  try {
    await writeFile(join(work, 'snapshot.json'), JSON.stringify({ format: FORMAT, snapshot } satisfies ArchiveMeta, null, 2));
    await flattenDisk(join(src, 'disk.qcow2'), join(work, 'disk.qcow2'), 'the disk layer');
    const members = [...MEMBERS];
    if (existsSync(join(src, DATA_MEMBER))) {
      await flattenDisk(join(src, DATA_MEMBER), join(work, DATA_MEMBER), 'the data disk layer');
      members.push(DATA_MEMBER);
    }
    await tool('ln', ['-s', join(src, 'state'), join(work, 'state')], 'staging failed');
    await tool('ln', ['-s', join(src, 'memory'), join(work, 'memory')], 'staging failed');
    return await writeHostFile(host, file, async (out) => {
      await tool('tar', ['--sparse', '--dereference', '-cf', out, '-C', work, ...members], 'writing the archive failed');
      return { bytes: (await stat(out)).size };
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Reads an archive made by exportSnapshot; the snapshot keeps its id and name unless they clash.
 * Nothing in it is trusted: the metadata is checked field by field (domain/snapshot-archive.ts),
 * every member must come out as a plain file with one link (no symlink to /etc/shadow as
 * `memory`), each disk must be a qcow2 with no backing file and no external data file (else a
 * fork would read, and an export copy out, whatever host file it names), RAM and state sizes
 * must fit the spec, and all of it is checked before anything is recorded.
 */
export async function importSnapshot(
  ctx: Pick<EngineContext, 'paths' | 'db' | 'stores' | 'checkpoint' | 'config'>,
  file: string,
  name?: string,
  host: HostFs = CELLD_HOST_FS,
): Promise<SnapshotRecord> {
  const { paths } = ctx;
  // Opened with the caller's access; tar reads it through /proc (each open there reads from the start).
  const archive = await host.openRead(file).catch(hostPathError(file));
  const staging = join(paths.snapshots, `.import-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  try {
    // GNU tar cannot be stopped part-way: its headers are read first, within entries, bytes and free space.
    const limits = { maxEntries: MAX_ARCHIVE_ENTRIES, ...(ctx.config.importMaxBytes !== undefined ? { maxBytes: ctx.config.importMaxBytes } : {}) };
    const budget = await ArchiveBudget.open(`snapshot archive ${file}`, paths.snapshots, limits);
    await scanArchive(archive.path, file, budget, { gnuSparse: true }).catch((err: unknown) => {
      if (err instanceof CellError && (err.code === ErrorCodes.SIZE_LIMIT || err.code === ErrorCodes.RESOURCES_EXHAUSTED)) throw err;
      // Not a tar, or a broken one: what GNU tar's refusal said before.
      const why = (err as Error).message.replace(`${file}: `, '');
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${file} is not a cellvm snapshot archive: ${why}`);
    });
    await tool('tar', ['--no-same-owner', '--no-same-permissions', '-xf', archive.path, '-C', staging, ...MEMBERS], `${file} is not a cellvm snapshot archive`);
    // The data disk is optional; extracting it alone tells whether the archive has one.
    await tool('tar', ['--no-same-owner', '--no-same-permissions', '-xf', archive.path, '-C', staging, DATA_MEMBER], 'no data disk').catch(() => {});
    await ctx.checkpoint('snapshot-import:extracted');
    if ((await plainFileSize(file, join(staging, 'snapshot.json'), 'snapshot.json')) > MAX_ARCHIVE_META_BYTES) throw unusable(file, 'snapshot.json is too large');
    const metaText = await readFile(join(staging, 'snapshot.json'), 'utf8');
    const meta = parseArchiveMeta(file, metaText, name);
    await rm(join(staging, 'snapshot.json'));
    return await adoptStagedSnapshot(ctx, staging, file, meta, archivedParent(metaText));
  } catch (err) {
    throw await explainNoSpace(err, paths.snapshots, `importing ${file} stopped`);
  } finally {
    await rm(staging, { recursive: true, force: true });
    await archive.close();
  }
}

/**
 * Checks a snapshot's files staged in `staging` (state, memory, disk.qcow2 and maybe data.qcow2,
 * from an archive or a registry) against its metadata, then publishes the folder and records the
 * snapshot. `source` names where they came from in messages. On failure nothing is recorded and
 * the staging folder is the caller's to remove.
 */
export async function adoptStagedSnapshot(
  ctx: Pick<EngineContext, 'paths' | 'db' | 'stores' | 'checkpoint'>,
  staging: string,
  source: string,
  meta: Omit<SnapshotRecord, 'stateBytes' | 'memoryBytes' | 'diskBytes'>,
  /** The snapshot it was taken on where it was made (`archivedParent`): its RAM is stored against that one's if it is here. */
  memoryParent: string | null,
  /** Recorded in the same transaction as the snapshot (a pull's source reference). */
  alsoRecord: (record: SnapshotRecord) => void = () => {},
): Promise<SnapshotRecord> {
  const { paths, stores } = ctx;
  const file = source;
  const members = existsSync(join(staging, DATA_MEMBER)) || (await isLink(join(staging, DATA_MEMBER))) ? [...DISK_MEMBERS, DATA_MEMBER] : DISK_MEMBERS;
  const sizes = new Map<string, number>();
  for (const member of members) sizes.set(member, await plainFileSize(file, join(staging, member), member));
  const memoryBytes = meta.spec.memoryMib * 1024 * 1024;
  if (sizes.get('memory') !== memoryBytes) throw unusable(file, `its RAM file is ${sizes.get('memory')} bytes, not the ${memoryBytes} of a ${meta.spec.memoryMib} MiB guest`);
  if (sizes.get('state')! > MAX_STATE_BYTES) throw unusable(file, `its device state is ${sizes.get('state')} bytes (at most ${MAX_STATE_BYTES})`);
  for (const disk of members.filter((m) => m.endsWith('.qcow2'))) await assertStandaloneQcow2(file, join(staging, disk), disk);
  if ((meta.spec.dataDiskMib ?? 0) > 0 !== members.includes(DATA_MEMBER)) throw unusable(file, 'its data disk does not match its spec');
  if (stores.snapshots.getAny(meta.id)) throw new CellError(ErrorCodes.CONFLICT, `snapshot ${meta.id.slice(0, 12)} is already here`);
  if (stores.snapshots.nameExists(meta.name)) throw new CellError(ErrorCodes.CONFLICT, `the name "${meta.name}" is already in use by another snapshot: give it another with --name`);
  // Its parent here already (pulled or imported before, or taken here): stored as a clone of the
  // parent's RAM with the pages that differ, where the file system has reflinks.
  await storeMemory(join(staging, 'memory'), staging, parentMemory(ctx, { parentSnapshot: memoryParent, spec: meta.spec }));
  const allocated = await Promise.all(['state', 'memory', 'disk.qcow2', DATA_MEMBER].map((f) => allocatedBytes(join(staging, f))));
  const memoryBytesHere = (await clonedMemoryBytes(staging)) ?? allocated[1]!;
  await dropCloneNote(staging);
  const record: SnapshotRecord = { ...meta, stateBytes: allocated[0]!, memoryBytes: memoryBytesHere, diskBytes: allocated[2]! + allocated[3]! };
  await ctx.checkpoint('snapshot-import:checked');
  // Published, then recorded: a crash in between leaves a folder without a row, swept at start-up.
  await rename(staging, paths.snapshotDir(record.id));
  await ctx.checkpoint('snapshot-import:published');
  try {
    ctx.db.transaction(() => {
      stores.snapshots.insert(record);
      alsoRecord(record);
    })();
  } catch (err) {
    await rm(paths.snapshotDir(record.id), { recursive: true, force: true });
    throw err;
  }
  await ctx.checkpoint('snapshot-import:recorded');
  return record;
}

/** The files of a snapshot's folder besides its optional data disk. */
const DISK_MEMBERS = ['state', 'memory', 'disk.qcow2'];

/** An export has five members at most; more is not one of ours (and GNU tar would unpack a folder of them). */
const MAX_ARCHIVE_ENTRIES = 16;

/** Device state is tens of KiB; a state file this large is not one. */
const MAX_STATE_BYTES = 256 * 1024 * 1024;

function unusable(file: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `${file} is not a usable cellvm snapshot archive: ${why}`);
}

async function isLink(path: string): Promise<boolean> {
  return lstat(path).then(
    (s) => s.isSymbolicLink(),
    () => false,
  );
}

/** The size of an extracted member that must be a plain file: no symlink, no device, no hard link to anything. */
export async function plainFileSize(file: string, path: string, member: string, refuse: (file: string, why: string) => CellError = unusable): Promise<number> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    throw refuse(file, `${member} is missing`);
  }
  if (!st.isFile()) throw refuse(file, `${member} is not a plain file (${st.isSymbolicLink() ? 'a symlink' : 'a special file'})`);
  if (st.nlink !== 1) throw refuse(file, `${member} is a hard link`);
  return st.size;
}

/** A qcow2 that stands alone: no backing file, no external data file (checked before QEMU opens it as a disk). */
export async function assertStandaloneQcow2(file: string, path: string, member: string): Promise<void> {
  let info: { format?: string; 'backing-filename'?: string; 'full-backing-filename'?: string; 'format-specific'?: { data?: { 'data-file'?: string } } };
  try {
    // -f qcow2: never let qemu-img guess the format of an untrusted file.
    const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', path], { maxBuffer: 1024 * 1024 });
    info = JSON.parse(stdout) as typeof info;
  } catch (err) {
    const stderr = ((err as { stderr?: string }).stderr ?? '').trim().split('\n').pop();
    throw unusable(file, `${member} is not a qcow2 disk${stderr ? ` (${stderr})` : ''}`);
  }
  if (info.format !== 'qcow2') throw unusable(file, `${member} is not a qcow2 disk`);
  const backing = info['backing-filename'] ?? info['full-backing-filename'];
  if (backing) throw unusable(file, `${member} names a backing file (${backing}): an exported disk stands alone`);
  const dataFile = info['format-specific']?.data?.['data-file'];
  if (dataFile) throw unusable(file, `${member} names an external data file (${dataFile})`);
}
