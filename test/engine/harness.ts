/**
 * An Engine on a fake backend and a fake host (test/engine/fake-backend.ts): a real SQLite
 * database, real files under a private CELL_HOME, the real guest agent in --stdio mode, no QEMU.
 * `reopen` is a daemon restart (the machines live on in the fake), `crashAndReopen` the same
 * without a clean close (kill -9 of celld).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cellPaths, type CellPaths } from '../../src/domain/paths.js';
import type { EngineContext, HostProvider } from '../../src/engine/context.js';
import { Engine, type EngineDeps } from '../../src/engine/engine.js';
import { NoNetworking } from '../../src/engine/networking.js';
import type { HostReady } from '../../src/engine/host-readiness.js';
import { ensureAgent } from '../../src/host/agent-build.js';
import { ImageStore } from '../../src/store/image-store.js';
import { openDatabase } from '../../src/store/database.js';
import { SHARED_CACHE } from '../helpers/cell-home.js';
import { FakeBackend } from './fake-backend.js';

export const FAKE_IMAGE_DIGEST = `sha256:${'f'.repeat(64)}`;

/** Host set-up that is already done: fake kernel and initramfs files, one image called busybox. */
class FakeHost implements HostProvider {
  constructor(private readonly paths: CellPaths) {}

  async ensure(): Promise<HostReady> {
    const file = (name: string) => {
      const path = join(this.paths.home, name);
      writeFileSync(path, name);
      return path;
    };
    return {
      assets: {
        kernel: { path: file('vmlinuz'), release: 'fake-6.1', digest: `sha256:${'1'.repeat(64)}` },
        initramfs: { path: file('initramfs'), digest: `sha256:${'2'.repeat(64)}` },
        agent: { path: file('agent'), digest: `sha256:${'3'.repeat(64)}` },
        builtinImages: [],
      },
      accelerator: { accelerator: 'tcg', reason: 'fake host' } as HostReady['accelerator'],
      qemuVersion: 'fake-1.0',
    };
  }
}

export interface FakeEngine {
  engine: Engine;
  backend: FakeBackend;
  paths: CellPaths;
  /** A clean daemon restart: close (machines keep running), open again. */
  reopen(deps?: EngineDeps): Promise<Engine>;
  /**
   * celld killed -9: nothing closed, a new engine opens on the same home and machines; `whileDown`
   * runs in between (a machine dying while no daemon watches).
   */
  crashAndReopen(opts?: { deps?: EngineDeps; whileDown?: () => Promise<void> }): Promise<Engine>;
  cleanup(): Promise<void>;
}

export interface FakeEngineOptions {
  /** Runs on the new home before the engine opens it (a test that plants files there). */
  beforeOpen?: (paths: CellPaths) => void;
}

/** Opens an engine on a fresh home; if opening fails, the home is removed and the error thrown. */
export async function openFakeEngine(deps: EngineDeps = {}, opts: FakeEngineOptions = {}): Promise<FakeEngine> {
  const home = mkdtempSync('/tmp/celle-');
  const paths = cellPaths(home, { CELL_CACHE: SHARED_CACHE, CELL_MEMORY_DIR: join(home, 'memory') });
  const agent = await ensureAgent({ cacheDir: SHARED_CACHE });
  const backend = new FakeBackend(agent.path);
  registerImage(paths);
  const open = (more: EngineDeps = {}) =>
    Engine.open(paths, { backend, host: new FakeHost(paths), config: {}, spares: { enabled: false }, log: { info() {}, warn() {} }, network: new NoNetworking('the fake backend has no NICs'), ...deps, ...more });
  let first: Engine;
  try {
    opts.beforeOpen?.(paths);
    first = await open();
  } catch (err) {
    rmSync(home, { recursive: true, force: true });
    throw err;
  }
  const handle: FakeEngine = {
    engine: first,
    backend,
    paths,
    async reopen(more) {
      await handle.engine.close();
      handle.engine = await open(more);
      return handle.engine;
    },
    async crashAndReopen({ deps: more, whileDown } = {}) {
      // What a dead daemon leaves: its connections drop (the machines' control channels close
      // from their side without a word to anyone), its spares' folders stay.
      const dead = (handle.engine as unknown as { ctx: EngineContext }).ctx;
      dead.live.detachAll();
      dead.db.close();
      await whileDown?.();
      handle.engine = await open(more);
      return handle.engine;
    },
    async cleanup() {
      await handle.engine.close().catch(() => {});
      await backend.killAll();
      rmSync(home, { recursive: true, force: true });
    },
  };
  return handle;
}

function registerImage(paths: CellPaths): void {
  const disk = join(paths.home, 'busybox.ext4');
  writeFileSync(disk, 'base disk');
  const db = openDatabase(paths.db);
  try {
    new ImageStore(db).upsert({
      reference: 'busybox',
      digest: FAKE_IMAGE_DIGEST,
      diskPath: disk,
      sizeBytes: 9,
      config: { Cmd: ['sh'], Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'] },
      builtin: true,
      createdAt: new Date().toISOString(),
      lastUsed: null,
    });
  } finally {
    db.close();
  }
}
