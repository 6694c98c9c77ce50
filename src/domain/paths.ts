import { homedir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';

/**
 * Where cellvm keeps its state. CELL_HOME wins; root defaults to /var/lib/cellvm, others to the
 * XDG data dir. CELL_CACHE (kernel, initramfs, built-in images, accelerator verdict) defaults to
 * CELL_HOME/cache; tests point many homes at one cache so host assets are built once.
 */
export interface CellPaths {
  home: string;
  cache: string;
  db: string;
  socket: string;
  vms: string;
  images: string;
  snapshots: string;
  daemonLog: string;
  daemonPid: string;
  /** celld's settings (domain/config.ts); optional. */
  config: string;
  /** Running VMs' RAM files, on tmpfs, one folder per CELL_HOME (CELL_MEMORY_DIR overrides). */
  memory: string;
}

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CELL_HOME) return env.CELL_HOME;
  if (process.getuid?.() === 0) return '/var/lib/cellvm';
  const xdg = env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(xdg, 'cellvm');
}

export function cellPaths(home: string = defaultHome(), env: NodeJS.ProcessEnv = process.env): CellPaths {
  return {
    home,
    cache: env.CELL_CACHE || join(home, 'cache'),
    db: join(home, 'cell.db'),
    socket: join(home, 'celld.sock'),
    vms: join(home, 'vms'),
    images: join(home, 'images'),
    snapshots: join(home, 'snapshots'),
    daemonLog: join(home, 'celld.log'),
    daemonPid: join(home, 'celld.pid'),
    config: join(home, 'config.json'),
    memory: env.CELL_MEMORY_DIR || join('/dev/shm', `cellvm-${createHash('sha256').update(home).digest('hex').slice(0, 12)}`),
  };
}
