/**
 * Where a cold boot's time goes (issue 14): one bare QEMU boot of the guest kernel, initramfs and
 * busybox disk to the agent's first answer, with `printk.time=1` and the agent's debug lines, and
 * the serial log printed with kernel timestamps. BOOT_PROFILE_KERNEL / BOOT_PROFILE_INITRD point
 * at another kernel or initramfs to compare.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { AgentClient } from '../src/agent/client.js';
import { buildQemuArgv } from '../src/vmm/qemu/argv.js';
import { machineFiles } from '../src/vmm/qemu/files.js';
import { createOverlay } from '../src/vmm/qemu/overlay.js';
import { signalProcess, spawnQemu, waitGone } from '../src/vmm/qemu/process.js';
import { connectWithRetry } from '../src/vmm/unix-socket.js';
import { REPO } from './lib.js';
import { join } from 'node:path';

const { ensureHostAssets } = await import('../src/host/index.js');
const assets = await ensureHostAssets({ cacheDir: process.env.CELL_CACHE ?? join(REPO, '.cell-test', 'cache'), install: false });
const busybox = assets.builtinImages.find((i) => i.reference === 'busybox')!;
const kernel = process.env.BOOT_PROFILE_KERNEL ?? assets.kernel.path;
const initrd = process.env.BOOT_PROFILE_INITRD ?? assets.initramfs.path;
const extra = (process.env.BOOT_PROFILE_ARGS ?? 'printk.time=1 loglevel=7 cell.debug=1').split(' ').filter(Boolean);
const dir = mkdtempSync('/tmp/cellprof-');
const id = `prof${Date.now()}`;
const files = machineFiles(dir);
await createOverlay(files.overlay, busybox.diskPath);
const argv = buildQemuArgv(
  { id, dir, kernelPath: kernel, initrdPath: initrd, baseDiskPath: busybox.diskPath, baseDiskFormat: 'raw', cpus: 1, memoryMib: 256, hostname: 'prof', accelerator: 'tcg', memory: { path: `/dev/shm/cellprof-${id}.mem`, shared: true } },
  files,
  extra,
).map((a) => (a === 'quiet' ? 'printk.time=1' : a.startsWith('microvm,') && process.env.BOOT_PROFILE_MACHINE ? `${a},${process.env.BOOT_PROFILE_MACHINE}` : a));
if (process.env.BOOT_PROFILE_ARGV) {
  console.log(JSON.stringify(argv));
  process.exit(0);
}
const started = performance.now();
const q = spawnQemu(argv, files.qemuLog);
// The guest's clock starts some time after QEMU does: watch the serial log grow and compare each
// line's kernel timestamp with the host's time since spawn (their least difference bounds the
// time QEMU, firmware and the kernel's loading take before the guest's clock runs).
let offset = Infinity;
const watch = setInterval(() => {
  const now = performance.now() - started;
  let text = '';
  try {
    text = readFileSync(files.serialLog, 'utf8');
  } catch {
    return;
  }
  for (const m of text.matchAll(/^\[\s*(\d+\.\d+)\]/gm)) offset = Math.min(offset, now - Number(m[1]) * 1000);
}, 2);
try {
  const agent = new AgentClient(await connectWithRetry(files.agentSocket, 30_000));
  console.log(`QEMU listened on the agent's socket after ${(performance.now() - started).toFixed(0)} ms`);
  await agent.waitReady(Date.now() + 30_000);
  console.log(`agent ready after ${(performance.now() - started).toFixed(0)} ms (QEMU spawn to first PONG)`);
  agent.close();
} finally {
  clearInterval(watch);
  if (Number.isFinite(offset)) console.log(`the guest's clock started at most ${offset.toFixed(0)} ms after QEMU was spawned`);
  signalProcess(q.pid, 'SIGKILL');
  await waitGone(q.pid, id, 5000);
  console.log(readFileSync(files.serialLog, 'utf8'));
  rmSync(dir, { recursive: true, force: true });
  rmSync(`/dev/shm/cellprof-${id}.mem`, { force: true });
}
