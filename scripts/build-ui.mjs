// Builds the dashboard (src/ui) into dist/ui, which celld serves at /ui on its TCP listener:
// index.html, app.js (the page's code with xterm.js, one file) and app.css (xterm.js's styles and
// ours). Everything the page loads comes from celld: no CDN.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';

const out = 'dist/ui';
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['src/ui/main.ts'],
  outfile: `${out}/app.js`,
  bundle: true,
  platform: 'browser',
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  logLevel: 'warning',
  // The page reads the route table (src/api) for paths and types; the schemas are celld's business,
  // as for the CLI bundle (scripts/cli-schema-stub.mjs says what stands in for TypeBox).
  alias: { '@sinclair/typebox': './scripts/cli-schema-stub.mjs' },
  minify: true,
  sourcemap: false,
});
const css = [readFileSync('node_modules/@xterm/xterm/css/xterm.css', 'utf8'), readFileSync('src/ui/style.css', 'utf8')].join('\n');
writeFileSync(`${out}/app.css`, css);
copyFileSync('src/ui/index.html', `${out}/index.html`);
