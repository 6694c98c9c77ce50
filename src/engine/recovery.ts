import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig, withEnvironment, type CellConfig } from '../domain/config.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import type { Engine } from './engine.js';
import { exitInfo } from './vm-records.js';

/** After a daemon restart: reconnect to machines still alive, record the rest as stopped. */
export async function reconcile(engine: Engine): Promise<void> {
  for (const vm of engine.vms.list()) {
    if (vm.state === 'created' || vm.state === 'stopped') continue;
    const attached = vm.pid && vm.state === 'running' ? await engine.live.attach(vm.id, engine.vmDir(vm.id), vm.pid) : null;
    if (attached) continue;
    if (vm.pid) await engine.backend.kill(vm.pid, vm.id);
    engine.releaseMemory(vm.id);
    engine.vms.update(vm.id, {
      state: 'stopped',
      stoppedAt: new Date().toISOString(),
      pid: null,
      exit: vm.exit ?? exitInfo(vm.state === 'stopping' ? 'stopped' : 'lost'),
    });
  }
}

/**
 * VM directories no record names: spares of a celld that crashed, or a VM whose creation was cut
 * short. Their QEMU (if it still runs, and is theirs) is ended and the directory removed.
 */
export async function sweepOrphans(engine: Engine): Promise<void> {
  const known = new Set(engine.vms.list().map((vm) => vm.id));
  const orphans = [
    ...(await readdir(engine.paths.vms)).filter((id) => !known.has(id)).map((id) => ({ id, dir: engine.vmDir(id) })),
    ...(await readdir(join(engine.paths.home, 'spares')).catch(() => [] as string[])).map((id) => ({ id, dir: engine.spareDir(id) })),
  ];
  for (const { id, dir } of orphans) {
    if (!/^[0-9a-f]{64}$/.test(id)) continue;
    const pid = Number(await readFile(join(dir, 'qemu.pid'), 'utf8').catch(() => ''));
    if (pid > 0) await engine.backend.kill(pid, id);
    engine.releaseMemory(id);
    await rm(dir, { recursive: true, force: true });
  }
}

/** CELL_HOME/config.json (absent: defaults) with celld's environment on top. A bad file stops celld with a clear line. */
export async function loadConfig(path: string): Promise<CellConfig> {
  let text: string | undefined;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  let raw: unknown = {};
  if (text !== undefined) {
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new CellError(ErrorCodes.INVALID_ARGUMENT, `${path}: not valid JSON (${(err as Error).message})`);
    }
  }
  return withEnvironment(parseConfig(raw, path), process.env);
}
