// Bundles the compiled CLI (dist/cli/main.js and everything it imports) into one file,
// dist/cli/cell.mjs, which bin/cell runs. Why: loading ~400 small ES modules (TypeBox alone is
// 266) costs Node 20 about 110 ms per `cell` command, more than the command itself; one file
// loads in a fraction of that. It sits beside main.js so the relative paths it uses
// (../server/main.js for celld, ../../package.json) stay right.
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/cli/main.js'],
  outfile: 'dist/cli/cell.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
  // CommonJS dependencies (commander) call require(): give the bundle one.
  banner: { js: "import { createRequire as __cellRequire } from 'node:module'; const require = __cellRequire(import.meta.url);" },
});
