import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import type { CellPaths } from '../domain/paths.js';
import type { EngineContext } from './context.js';

const run = promisify(execFile);
const FORMAT = 'cellvm-snapshot/1';
const MEMBERS = ['snapshot.json', 'state', 'memory', 'disk.qcow2'];
/** Present when the VM had a data disk. */
const DATA_MEMBER = 'data.qcow2';

interface ArchiveMeta {
  format: string;
  snapshot: SnapshotRecord;
}

async function tool(cmd: string, args: string[], what: string): Promise<void> {
  try {
    await run(cmd, args, { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const stderr = ((err as { stderr?: string }).stderr ?? '').trim().split('\n').pop();
    throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what}: ${stderr || (err as Error).message}`);
  }
}

/**
 * Writes a snapshot to one tar file another host can import: its metadata, device state, the RAM
 * file written out in full (tar's sparse mode keeps the archive small), and its disk flattened
 * into one standalone qcow2 (the backing chain names paths that exist only on this host).
 */
export async function exportSnapshot(paths: CellPaths, snapshot: SnapshotRecord, file: string): Promise<{ bytes: number }> {
  const src = paths.snapshotDir(snapshot.id);
  const work = await mkdtemp(join(dirname(file), '.cell-export-'));
  try {
    await writeFile(join(work, 'snapshot.json'), JSON.stringify({ format: FORMAT, snapshot } satisfies ArchiveMeta, null, 2));
    await tool('qemu-img', ['convert', '-O', 'qcow2', join(src, 'disk.qcow2'), join(work, 'disk.qcow2')], 'flattening the disk layer failed');
    const members = [...MEMBERS];
    if (existsSync(join(src, DATA_MEMBER))) {
      await tool('qemu-img', ['convert', '-O', 'qcow2', join(src, DATA_MEMBER), join(work, DATA_MEMBER)], 'flattening the data disk layer failed');
      members.push(DATA_MEMBER);
    }
    await tool('ln', ['-s', join(src, 'state'), join(work, 'state')], 'staging failed');
    await tool('ln', ['-s', join(src, 'memory'), join(work, 'memory')], 'staging failed');
    const tmp = `${file}.partial`;
    await tool('tar', ['--sparse', '--dereference', '-cf', tmp, '-C', work, ...members], 'writing the archive failed');
    await rename(tmp, file);
    return { bytes: (await stat(file)).size };
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(`${file}.partial`, { force: true });
  }
}

/** Reads an archive made by exportSnapshot; the snapshot keeps its id and name unless they clash. */
export async function importSnapshot(ctx: Pick<EngineContext, 'paths' | 'db' | 'stores'>, file: string, name?: string): Promise<SnapshotRecord> {
  const { paths, stores } = ctx;
  const staging = join(paths.snapshots, `.import-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  try {
    await tool('tar', ['-xf', file, '-C', staging, ...MEMBERS], `${file} is not a cellvm snapshot archive`);
    // The data disk is optional; extracting it alone tells whether the archive has one.
    await tool('tar', ['-xf', file, '-C', staging, DATA_MEMBER], 'no data disk').catch(() => {});
    let meta: ArchiveMeta;
    try {
      meta = JSON.parse(await readFile(join(staging, 'snapshot.json'), 'utf8')) as ArchiveMeta;
    } catch {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${file} is not a cellvm snapshot archive (no readable snapshot.json)`);
    }
    if (meta.format !== FORMAT || !/^[0-9a-f]{64}$/.test(meta.snapshot?.id ?? '')) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${file} is not a cellvm snapshot archive (format ${String(meta.format)})`);
    }
    const record: SnapshotRecord = {
      ...meta.snapshot,
      name: name ?? meta.snapshot.name,
      // It came from another host: no VM or snapshot here is its parent.
      parentVm: null,
      parentSnapshot: null,
      createdAt: meta.snapshot.createdAt,
    };
    if (stores.snapshots.getAny(record.id)) throw new CellError(ErrorCodes.CONFLICT, `snapshot ${record.id.slice(0, 12)} is already here`);
    await rm(join(staging, 'snapshot.json'));
    await rename(staging, paths.snapshotDir(record.id));
    try {
      ctx.db.transaction(() => {
        stores.snapshots.insert(record);
      })();
    } catch (err) {
      await rm(paths.snapshotDir(record.id), { recursive: true, force: true });
      throw err;
    }
    return record;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
