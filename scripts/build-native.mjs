// Builds native/host-creds.c into dist/native/host-creds.node (celld's peer credentials and
// per-thread file access; see that file). One C file against Node's own N-API headers, so a plain
// `cc` does it: node-gyp would bring Python and make, and fetch headers this host already has.
// Rebuilt only when the source is newer. Without a compiler or headers celld still runs, but a
// root celld with a socket group refuses to start (it could not tell its callers apart).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'native/host-creds.c');
const out = join(root, 'dist/native/host-creds.node');
if (existsSync(out) && statSync(out).mtimeMs >= statSync(source).mtimeMs) process.exit(0);

const includes = [join(process.execPath, '../../include/node'), '/usr/include/node', '/usr/local/include/node'];
const include = includes.find((dir) => existsSync(join(dir, 'node_api.h')));
if (!include) {
  console.warn(`[build] warning: Node's N-API headers (node_api.h) are not in ${includes.join(' or ')}: host-creds not built`);
  process.exit(0);
}
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.${process.pid}.tmp`;
try {
  execFileSync('cc', ['-O2', '-Wall', '-Werror', '-shared', '-fPIC', '-DNODE_GYP_MODULE_NAME=host_creds', `-I${include}`, source, '-o', tmp], { stdio: 'inherit' });
  renameSync(tmp, out);
} catch (err) {
  console.warn(`[build] warning: host-creds not built: ${err.message}`);
}
