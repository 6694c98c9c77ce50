import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';

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
  /** volumes/<id>.ext4: named volumes' sparse ext4 images (domain/volume.ts). */
  volumes: string;
  volumeImage(id: string): string;
  daemonLog: string;
  daemonPid: string;
  /** celld's settings (domain/config.ts); optional. */
  config: string;
  /** Running VMs' RAM files, on tmpfs, one folder per CELL_HOME (CELL_MEMORY_DIR overrides). */
  memory: string;
  /** Restored, paused QEMUs waiting for a fork (engine/spare-pool.ts). */
  spares: string;
  /** vms/<id>/: a VM's overlay disks, sockets, logs and pidfile. */
  vmDir(id: string): string;
  /** spares/<id>/: a spare's files until a fork takes it (then they move to vmDir(id)). */
  spareDir(id: string): string;
  /**
   * A running VM's RAM file, MAP_SHARED so a snapshot can take it as it is. It lives on tmpfs:
   * on ext4 the guest's page faults cost block allocation (measured: boot 2.9 s against 2.2 s).
   * Sparse, so it holds only the pages the guest touched; deleted when the VM stops.
   */
  memoryFile(id: string): string;
  /** snapshots/<id>/: `memory`, `state`, `disk.qcow2` (and `data.qcow2`); never changed once written. */
  snapshotDir(id: string): string;
}

/**
 * Folders a celld makes under /tmp (short socket paths that QEMU's own user can reach): RAM
 * converters (`conv`) and migration save sockets (`mig`). One prefix per CELL_HOME and kind, so a
 * celld that starts sweeps its own leftovers and never another CELL_HOME's.
 */
export function homeTmpPrefix(home: string, kind: 'conv' | 'mig'): string {
  return `/tmp/cell-${kind}-${homeHash(home)}-`;
}

// Loading node:crypto costs every short-lived `cell` command ~7 ms, and only celld uses the names
// hashed from the home: it is loaded on first use.
const lazyRequire = createRequire(import.meta.url);

/** 12 hex digits of the home's SHA-256: names of its folders outside it (scripts/test.sh computes the same). */
function homeHash(home: string): string {
  const { createHash } = lazyRequire('node:crypto') as typeof import('node:crypto');
  return createHash('sha256').update(home).digest('hex').slice(0, 12);
}

export function defaultHome(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CELL_HOME) return env.CELL_HOME;
  if (process.getuid?.() === 0) return '/var/lib/cellvm';
  const xdg = env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(xdg, 'cellvm');
}

export function cellPaths(home: string = defaultHome(), env: NodeJS.ProcessEnv = process.env): CellPaths {
  let memory: string | undefined;
  const memoryDir = () => (memory ??= env.CELL_MEMORY_DIR || join('/dev/shm', `cellvm-${homeHash(home)}`));
  return {
    home,
    cache: env.CELL_CACHE || join(home, 'cache'),
    db: join(home, 'cell.db'),
    socket: join(home, 'celld.sock'),
    vms: join(home, 'vms'),
    images: join(home, 'images'),
    snapshots: join(home, 'snapshots'),
    volumes: join(home, 'volumes'),
    volumeImage: (id) => join(home, 'volumes', `${id}.ext4`),
    daemonLog: join(home, 'celld.log'),
    daemonPid: join(home, 'celld.pid'),
    config: join(home, 'config.json'),
    get memory() {
      return memoryDir();
    },
    spares: join(home, 'spares'),
    vmDir: (id) => join(home, 'vms', id),
    spareDir: (id) => join(home, 'spares', id),
    memoryFile: (id) => join(memoryDir(), `${id}.mem`),
    snapshotDir: (id) => join(home, 'snapshots', id),
  };
}
