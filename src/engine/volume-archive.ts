import { execFile } from 'node:child_process';
import { mkdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { newId, validateName } from '../domain/ids.js';
import { validateVolumeSize, type VolumeRecord } from '../domain/volume.js';
import type { EngineContext } from './context.js';
import { CELLD_HOST_FS, hostPathError, writeHostFile, type HostFs } from './host-fs.js';
import { plainFileSize } from './snapshot-archive.js';
import { ArchiveBudget } from '../image/archive/archive-budget.js';
import { scanArchive } from '../image/archive/scan-archive.js';

const run = promisify(execFile);
const FORMAT = 'cellvm-volume/1';
const MEMBERS = ['volume.json', 'volume.ext4'];

/**
 * `cell volume export`: the volume as one tar (sparse: it holds what was written) another host
 * imports whole. The image goes as it is, never read as a file system here: its contents are the
 * guest's, and only a guest's kernel parses them.
 */
export async function exportVolume(ctx: Pick<EngineContext, 'paths'>, volume: VolumeRecord, file: string, host: HostFs = CELLD_HOST_FS): Promise<{ bytes: number }> {
  await mkdir(ctx.paths.volumes, { recursive: true, mode: 0o700 });
  const work = join(ctx.paths.volumes, `.export-${volume.id}-${process.pid}`);
  await mkdir(work, { recursive: true, mode: 0o700 });
  try {
    const { id: _, ...meta } = volume;
    await writeFile(join(work, 'volume.json'), JSON.stringify({ format: FORMAT, volume: meta }, null, 2));
    await symlink(ctx.paths.volumeImage(volume.id), join(work, 'volume.ext4'));
    return await writeHostFile(host, file, async (out) => {
      await run('tar', ['--sparse', '--dereference', '-cf', out, '-C', work, ...MEMBERS]);
      return { bytes: (await stat(out)).size };
    });
  } catch (err) {
    if (err instanceof CellError) throw err;
    throw new CellError(ErrorCodes.INTERNAL, `exporting volume ${volume.name} failed: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim()}`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function unusable(file: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `${file} is not a usable cellvm volume archive: ${why}`);
}

/**
 * `cell volume import`: a volume from an archive exportVolume made, under its name or `name`.
 * Nothing in it is trusted: members must come out as plain files, the metadata is checked field
 * by field, the image's size must be the recorded one; it is published, then recorded (a crash in
 * between leaves an image without a row, swept at start).
 */
export async function importVolume(ctx: Pick<EngineContext, 'paths' | 'stores' | 'config'>, file: string, name?: string, host: HostFs = CELLD_HOST_FS): Promise<VolumeRecord> {
  const archive = await host.openRead(file).catch(hostPathError(file));
  await mkdir(ctx.paths.volumes, { recursive: true, mode: 0o700 });
  const staging = join(ctx.paths.volumes, `.import-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true, mode: 0o700 });
  try {
    const limits = { maxEntries: 4, ...(ctx.config.importMaxBytes !== undefined ? { maxBytes: ctx.config.importMaxBytes } : {}) };
    const budget = await ArchiveBudget.open(`volume archive ${file}`, ctx.paths.volumes, limits);
    await scanArchive(archive.path, file, budget, { gnuSparse: true }).catch((err: unknown) => {
      if (err instanceof CellError && (err.code === ErrorCodes.SIZE_LIMIT || err.code === ErrorCodes.RESOURCES_EXHAUSTED)) throw err;
      throw unusable(file, (err as Error).message.replace(`${file}: `, ''));
    });
    await run('tar', ['--no-same-owner', '--no-same-permissions', '-xf', archive.path, '-C', staging, ...MEMBERS]).catch(() => {
      throw unusable(file, 'it lacks volume.json or volume.ext4');
    });
    const metaBytes = await plainFileSize(file, join(staging, 'volume.json'), 'volume.json', unusable);
    if (metaBytes > 64 * 1024) throw unusable(file, 'volume.json is too large');
    const imageBytes = await plainFileSize(file, join(staging, 'volume.ext4'), 'volume.ext4', unusable);
    let meta: { format?: unknown; volume?: { name?: unknown; sizeBytes?: unknown; createdAt?: unknown; labels?: unknown } };
    try {
      meta = JSON.parse(await readFile(join(staging, 'volume.json'), 'utf8')) as typeof meta;
    } catch {
      throw unusable(file, 'volume.json is not JSON');
    }
    if (meta.format !== FORMAT) throw unusable(file, `its format is ${JSON.stringify(meta.format)}, not ${FORMAT}`);
    const v = meta.volume ?? {};
    const finalName = name ?? (typeof v.name === 'string' ? v.name : '');
    try {
      validateName(finalName);
      validateVolumeSize(Number(v.sizeBytes));
    } catch (err) {
      throw unusable(file, (err as Error).message);
    }
    if (imageBytes !== v.sizeBytes) throw unusable(file, `its image is ${imageBytes} bytes, not the ${String(v.sizeBytes)} it records`);
    const labels = v.labels && typeof v.labels === 'object' && !Array.isArray(v.labels) && Object.values(v.labels).every((x) => typeof x === 'string') ? (v.labels as Record<string, string>) : undefined;
    if (ctx.stores.volumes.byName(finalName)) throw new CellError(ErrorCodes.CONFLICT, `a volume named ${finalName} exists already: import it with --name`);
    const record: VolumeRecord = { id: newId(), name: finalName, sizeBytes: imageBytes, createdAt: new Date().toISOString(), ...(labels ? { labels } : {}) };
    await rename(join(staging, 'volume.ext4'), ctx.paths.volumeImage(record.id));
    ctx.stores.volumes.insert(record);
    return record;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await archive.close();
  }
}
