/**
 * A first benchmark figure for the image layer (not part of the test suite): pull + unpack + disk
 * build of a multi-layer image from a local Distribution registry with `pullImage`, against
 * `skopeo copy` to an OCI layout + `umoci unpack` of the same image, interleaved run by run.
 * Run: node --import tsx bench/pull-vs-skopeo.ts (also part of npm run bench)
 * BENCH_RUNS=N (default 3); BENCH_STAGING=disk stages our unpacked tree in the store's tmp/ dir
 * instead of tmpfs (to see what tmpfs staging buys).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pullImage } from '../src/image/pull.js';
import { pushImage } from '../src/image/push.js';
import { BlobStore } from '../src/store/blob-store.js';
import { startRegistry } from '../test/image/registry-harness.js';
import { storeImage } from '../test/image/image-builder.js';
import { makeStore } from '../test/image/helpers.js';
import type { PullProgress } from '../src/image/progress.js';
import { median } from './lib.js';

function hostTree(path: string): Buffer {
  return execFileSync('tar', ['--format=posix', '-C', '/', '-cf', '-', path.replace(/^\//, '')], { maxBuffer: 1 << 30 });
}

const registry = await startRegistry();
const src = mkdtempSync('/tmp/cellt-bench-');
try {
  const layers = ['/usr/lib/python3.11', '/usr/share/perl', '/usr/include', '/usr/share/zoneinfo'].map((p) => ({ tar: hostTree(p), compression: 'gzip' as const }));
  const image = await storeImage(src, { layers });
  const store = new BlobStore(src);
  let compressed = 0;
  for (const d of image.layerDigests) compressed += (await store.size(d)) ?? 0;
  const ref = `${registry.host}/bench/img:1`;
  await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src });
  const uncompressed = layers.reduce((a, l) => a + l.tar.length, 0);
  console.log(`image: ${layers.length} layers, ${(compressed / 1e6).toFixed(1)} MB compressed, ${(uncompressed / 1e6).toFixed(1)} MB of tar`);

  const ours: number[] = [];
  const theirs: number[] = [];
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const staging = process.env.BENCH_STAGING === 'disk' ? { stagingTmpfs: null } : {};
  for (let run = 0; run < runs; run++) {
    const s = makeStore();
    try {
      let t = performance.now();
      // Where the time went, from the progress events: first byte of layer 1 unpacked, last layer's start, disk build start.
      const at: Partial<Record<'unpack' | 'lastLayer' | 'disk' | 'downloaded', number>> = {};
      let blobsLeft = image.layerDigests.length;
      const onProgress = (e: PullProgress): void => {
        const now = performance.now() - t;
        if (e.phase === 'unpack') {
          at.unpack ??= now;
          if (e.layer === e.layers) at.lastLayer = now;
        } else if (e.phase === 'disk') at.disk = now;
        else if (e.phase === 'blob' && e.status === 'done' && image.layerDigests.includes(e.digest as never) && --blobsLeft === 0) at.downloaded = now;
      };
      await pullImage({ reference: ref, storeRoot: s.root, db: s.db, dockerConfigPath: null, onProgress, ...staging });
      const cold = performance.now() - t;
      ours.push(cold);
      t = performance.now();
      await pullImage({ reference: ref, storeRoot: s.root, db: s.db, dockerConfigPath: null, ...staging });
      const warm = performance.now() - t;
      const f = (n: number | undefined) => (n ?? NaN).toFixed(0);
      console.log(
        `cellvm pullImage (download + verify + unpack + mke2fs): ${cold.toFixed(0)} ms ` +
          `(unpack ${f(at.unpack)}-${f(at.disk)} ms, all layers downloaded at ${f(at.downloaded)} ms, last layer from ${f(at.lastLayer)} ms; disk ${f(cold - at.disk!)} ms); again (all cached): ${warm.toFixed(0)} ms`,
      );
    } finally {
      s.cleanup();
    }
    const work = mkdtempSync('/tmp/cellt-bench-umoci-');
    try {
      const t = performance.now();
      execFileSync('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `oci:${join(work, 'layout')}:img`]);
      const copied = performance.now() - t;
      execFileSync('umoci', ['unpack', '--image', `${join(work, 'layout')}:img`, join(work, 'bundle')], { stdio: 'pipe' });
      const total = performance.now() - t;
      theirs.push(total);
      console.log(`skopeo copy + umoci unpack: ${total.toFixed(0)} ms (copy ${copied.toFixed(0)} ms, unpack ${(total - copied).toFixed(0)} ms)`);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }
  const spread = (v: number[]) => `${Math.min(...v).toFixed(0)}-${Math.max(...v).toFixed(0)}`;
  console.log(`spread: cellvm ${spread(ours)} ms, skopeo+umoci ${spread(theirs)} ms`);
  console.log(
    `median of ${runs} interleaved${staging.stagingTmpfs === null ? ' (cellvm staging on disk)' : ''}: cellvm ${median(ours).toFixed(0)} ms, skopeo+umoci ${median(theirs).toFixed(0)} ms: ` +
      `ratio ${(median(ours) / median(theirs)).toFixed(2)} (target <= 1.0)`,
  );
} finally {
  await registry.stop();
  rmSync(src, { recursive: true, force: true });
}
