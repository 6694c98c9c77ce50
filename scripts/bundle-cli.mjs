// Bundles the compiled CLI (dist/cli/main.js and everything it imports, commander included, TypeBox
// not: scripts/cli-schema-stub.mjs) into
// one CommonJS file, dist/cli/cell.cjs, and writes V8's code cache for it, dist/cli/cell.cjs.cache;
// bin/cell loads the two through node:vm (scripts/cli-loader.mjs).
// Why: loading ~400 small ES modules (TypeBox alone is 266) cost Node 20 about 110 ms per `cell`
// command; one file loads in a fraction of that, and with the code cache V8 skips compiling what
// it compiled when the cache was made (Node 20 has no module compile cache; vm.Script has one, for
// scripts: hence CommonJS). It sits beside main.js so the relative paths it uses (../server/main.js
// for celld, ../../package.json) stay right.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';

const out = 'dist/cli/cell.cjs';
await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: out,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  logLevel: 'warning',
  // import.meta does not exist in a script: the bundle's own URL stands in for it.
  define: { 'import.meta.url': '__cellModuleUrl' },
  // The API's schemas are celld's business: scripts/cli-schema-stub.mjs says why and what stands in.
  alias: { '@sinclair/typebox': './scripts/cli-schema-stub.mjs' },
  // A script run through node:vm has no dynamic import(): lazily loaded Node modules become require().
  supported: { 'dynamic-import': false },
  // Smaller to read and compile; names kept, so stack traces still say where.
  minifyWhitespace: true,
  minifySyntax: true,
  banner: { js: "const __cellModuleUrl = require('node:url').pathToFileURL(__filename).href;" },
});
rmSync('dist/cli/cell.mjs', { force: true }); // the ES module bundle of earlier builds
// The cache holds what V8 compiled by the end of a run: a run that registers every command and
// prints help compiles the start-up paths all commands share.
rmSync(`${out}.cache`, { force: true });
execFileSync(process.execPath, ['bin/cell', '--help'], { env: { ...process.env, CELL_CLI_WRITE_CODE_CACHE: '1' }, stdio: 'ignore' });
