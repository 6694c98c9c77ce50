/**
 * Builds and templates, in one script:
 * - a 5-step build (install a package from a copied tarball, write files, copy a site, start a
 *   server and wait until it answers, check it) built from an empty cache, then again unchanged:
 *   target second build <= 5% of the first (fresh CELL_HOME per round, medians of rounds);
 * - `cell run --rm --template web -- wget ...` (warm from the template's snapshot) against a cold
 *   `cell run --rm busybox -- sh -c '<start the same server, wait for it, wget>'`, interleaved.
 * Run: node --import tsx bench/build-cache.ts (also part of npm run bench)
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { benchHome, fmt, median, runCell } from './lib.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);

const STEPS = `
[[step]]
copy = "pkg"
to = "/root/pkg"
[[step]]
run = "mkdir -p /opt && tar -xzf /root/pkg/zoneinfo.tar.gz -C /opt && rm -r /root/pkg && ls /opt/zoneinfo | wc -l"
[[step]]
copy = "site"
to = "/www"
[[step]]
run = "httpd -f -p 8080 -h /www"
detach = true
ready = "wget -q -O /dev/null http://127.0.0.1:8080/index.html"
[[step]]
run = "wget -q -O- http://127.0.0.1:8080/p7.html"
`;

function context(): string {
  const dir = mkdtempSync('/tmp/cellb-ctx-');
  mkdirSync(join(dir, 'pkg'));
  execFileSync('tar', ['-czf', join(dir, 'pkg', 'zoneinfo.tar.gz'), '-C', '/usr/share', 'zoneinfo']);
  mkdirSync(join(dir, 'site'));
  writeFileSync(join(dir, 'site', 'index.html'), '<h1>bench</h1>\n');
  for (let i = 0; i < 200; i++) writeFileSync(join(dir, 'site', `p${i}.html`), `page ${i}\n`);
  writeFileSync(join(dir, 'build.toml'), `base = "busybox"\n${STEPS}`);
  writeFileSync(
    join(dir, 'web.toml'),
    `template_id = "web"
[build]
base = "busybox"
[[build.step]]
copy = "site"
to = "/www"
[service]
start = "httpd -f -p 8080 -h /www"
ready = "wget -q -O /dev/null http://127.0.0.1:8080/index.html"
[[variants]]
role = "server"
vcpus = 1
mem_mib = 256
`,
  );
  return dir;
}

async function ok(args: string[], env: NodeJS.ProcessEnv) {
  const r = await runCell(args, env);
  if (r.code !== 0) throw new Error(`cell ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

async function main(): Promise<void> {
  const ctx = context();
  try {
    const first: number[] = [];
    const second: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const h = benchHome();
      try {
        await ok(['setup'], h.env);
        await ok(['info'], h.env); // celld up and the host ready: not part of either build
        first.push((await ok(['build', '-f', join(ctx, 'build.toml'), '-t', 'bench'], h.env)).ms);
        const again = await ok(['build', '-f', join(ctx, 'build.toml'), '-t', 'bench'], h.env);
        if ((again.stderr.match(/CACHED/g) ?? []).length !== 5) throw new Error(`second build was not all cache hits:\n${again.stderr}`);
        second.push(again.ms);
      } finally {
        h.close();
      }
    }

    const h = benchHome();
    const warm: number[] = [];
    const cold: number[] = [];
    try {
      await ok(['template', 'build', '--snapshot', join(ctx, 'web.toml')], h.env);
      // The cold baseline does the same work by hand: write the site, start httpd, poll, fetch.
      const coldScript =
        'mkdir -p /www && for i in $(seq 0 199); do echo page $i > /www/p$i.html; done; (httpd -f -p 8080 -h /www >/dev/null 2>&1 &); ' +
        'until wget -q -O /dev/null http://127.0.0.1:8080/p0.html 2>/dev/null; do sleep 0.05; done; wget -q -O- http://127.0.0.1:8080/p7.html';
      for (let i = 0; i < RUNS; i++) {
        const w = await ok(['run', '--rm', '--template', 'web', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/p7.html'], h.env);
        const c = await ok(['run', '--rm', 'busybox', '--', 'sh', '-c', coldScript], h.env);
        if (w.stdout !== 'page 7\n' || c.stdout !== 'page 7\n') throw new Error(`unexpected output: ${w.stdout} / ${c.stdout}`);
        warm.push(w.ms);
        cold.push(c.ms);
      }
    } finally {
      h.close();
    }

    console.log(`5-step build, empty cache: median ${fmt(median(first))} (${first.map(fmt).join(', ')})`);
    console.log(`same build, unchanged:     median ${fmt(median(second))} (${second.map(fmt).join(', ')})`);
    console.log(`second/first: ${((median(second) / median(first)) * 100).toFixed(1)}% (target <= 5%)`);
    console.log(`run --template (warm) to the server's answer: median ${fmt(median(warm))}`);
    console.log(`cold run of the same server to its answer:    median ${fmt(median(cold))}`);
    console.log(`speed-up cold/warm: ${(median(cold) / median(warm)).toFixed(1)}x`);
  } finally {
    rmSync(ctx, { recursive: true, force: true });
  }
}

await main();
