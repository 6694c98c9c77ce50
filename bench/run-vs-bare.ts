/**
 * `cell run --rm busybox -- true` (CLI -> celld -> QEMU -> agent -> exit) against a bare QEMU boot
 * of the same kernel, initramfs and disk with the same argv to the same point (agent answers a
 * PING). Interleaved runs, medians; targets (issue 14): the run <= 1.5 s and within 1.10x of the
 * bare boot. A second bare series runs `true` through the agent once it answers (no CLI, no celld):
 * the guest's own cost of the first command, which under TCG is tens of milliseconds of code
 * translated the first time; the run against it is what cellvm itself adds. A third series is the bare boot as it was before this project unpacked the kernel at
 * set-up (Debian's compressed bzImage, the crypto API's self-tests on), from BENCH_BZIMAGE or else
 * the cached kernel's own .deb (apt-get download); BENCH_BZIMAGE=none leaves it out.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { aptDownload } from '../src/host/apt.js';
import { run } from '../src/host/exec.js';
import { AgentClient } from '../src/agent/client.js';
import { buildQemuArgv } from '../src/vmm/qemu/argv.js';
import { machineFiles } from '../src/vmm/qemu/files.js';
import { createOverlay } from '../src/vmm/qemu/overlay.js';
import { signalProcess, spawnQemu, waitGone } from '../src/vmm/qemu/process.js';
import { connectWithRetry } from '../src/vmm/unix-socket.js';
import { CellClient } from '../src/sdk/index.js';
import { benchHome, fmt, median, runCell } from './lib.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 7);

async function bareBoot(kernel: string, initrd: string, base: string, accelerator: 'kvm' | 'tcg', asBefore = false, thenTrue = false): Promise<number> {
  const dir = mkdtempSync('/tmp/cellbare-');
  const id = `bare${Date.now()}`;
  const files = machineFiles(dir);
  try {
    await createOverlay(files.overlay, base);
    const argv = buildQemuArgv(
      { id, dir, kernelPath: kernel, initrdPath: initrd, baseDiskPath: base, baseDiskFormat: 'raw', cpus: 1, memoryMib: 256, hostname: 'bare', accelerator, memory: { path: `/dev/shm/cellbare-${id}.mem`, shared: true } },
      files,
    ).map((a) => (asBefore ? a.replace(' cryptomgr.notests', '') : a));
    const started = performance.now();
    const q = spawnQemu(argv, files.qemuLog);
    try {
      const agent = new AgentClient(await connectWithRetry(files.agentSocket, 30_000));
      await agent.waitReady(Date.now() + 30_000);
      if (thenTrue) {
        // The same first command celld runs, straight through the agent: the guest's own cost of it.
        const session = await agent.exec({ argv: ['true'], env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], cwd: '/', uid: 0, gid: 0, stdin: false });
        await session.exit;
      }
      const ms = performance.now() - started;
      agent.close();
      return ms;
    } finally {
      signalProcess(q.pid, 'SIGKILL');
      await waitGone(q.pid, id, 5000);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(`/dev/shm/cellbare-${id}.mem`, { force: true });
  }
}

/** Debian's vmlinuz of the cached kernel, from its package (into a temp folder removed at exit). */
async function debianBzImage(kernelPath: string): Promise<string> {
  const manifest = JSON.parse(readFileSync(join(kernelPath, '..', 'manifest.json'), 'utf8')) as { package: string; packageVersion: string; release: string };
  const dir = mkdtempSync('/tmp/cellbench-kernel-');
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const deb = await aptDownload(manifest.package, manifest.packageVersion, dir);
  await run('dpkg-deb', ['-x', deb, join(dir, 'tree')]);
  return join(dir, 'tree', 'boot', `vmlinuz-${manifest.release}`);
}

async function main(): Promise<void> {
  const h = benchHome();
  try {
    // Warm up: start celld, set up assets, learn the paths the engine uses.
    const client = await CellClient.connect({ home: h.home });
    await client.setup({});
    const info = await client.info();
    const warm = await runCell(['run', '--rm', 'busybox', '--', 'true'], h.env);
    if (warm.code !== 0) throw new Error(`warm-up run failed: ${warm.stderr}`);

    const { ensureHostAssets } = await import('../src/host/index.js');
    const assets = await ensureHostAssets({ cacheDir: info.cacheDir, install: false });
    const busybox = assets.builtinImages.find((i) => i.reference === 'busybox')!;
    const accel = info.accelerator as 'kvm' | 'tcg';

    const bzImage = process.env.BENCH_BZIMAGE === 'none' ? undefined : (process.env.BENCH_BZIMAGE ?? (await debianBzImage(assets.kernel.path)));
    const bare: number[] = [];
    const bareTrue: number[] = [];
    const before: number[] = [];
    const cell: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      if (bzImage) before.push(await bareBoot(bzImage, assets.initramfs.path, busybox.diskPath, accel, true));
      bare.push(await bareBoot(assets.kernel.path, assets.initramfs.path, busybox.diskPath, accel));
      bareTrue.push(await bareBoot(assets.kernel.path, assets.initramfs.path, busybox.diskPath, accel, false, true));
      const r = await runCell(['run', '--rm', 'busybox', '--', 'true'], h.env);
      if (r.code !== 0) throw new Error(`cell run failed: ${r.stderr}`);
      cell.push(r.ms);
    }
    const ratio = median(cell) / median(bare);
    console.log(`accelerator: ${accel}; runs: ${RUNS} interleaved; kernel ${assets.kernel.path}`);
    if (bzImage) {
      console.log(`bare boot as before (${bzImage}, crypto self-tests on): median ${fmt(median(before))}`);
      console.log(`ratio bare now/before: ${(median(bare) / median(before)).toFixed(3)}`);
    }
    console.log(`bare QEMU boot to agent ready: median ${fmt(median(bare))} (min ${fmt(Math.min(...bare))}, max ${fmt(Math.max(...bare))})`);
    console.log(`cell run --rm busybox -- true:  median ${fmt(median(cell))} (min ${fmt(Math.min(...cell))}, max ${fmt(Math.max(...cell))})`);
    console.log(`bare boot, then \`true\` through the agent: median ${fmt(median(bareTrue))} (min ${fmt(Math.min(...bareTrue))}, max ${fmt(Math.max(...bareTrue))})`);
    console.log(`ratio cell/bare: ${ratio.toFixed(3)} (target <= 1.10; the run's median target <= 1500 ms)`);
    console.log(`ratio cell/(bare + the same command): ${(median(cell) / median(bareTrue)).toFixed(3)} (what the CLI, celld, create and removal add)`);
  } finally {
    h.close();
  }
}

await main();
