import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { run } from './exec.js';
import { fsyncPath, isFile, makeWorkDir, publishDir, readJsonIfExists, sha256File, sha256Hex, writeFileSynced } from './files.js';
import type { ProgressFn } from './types.js';

/**
 * The guest agent (every guest/*.c, with the guest/*.h they include), compiled statically because
 * it runs as PID 1 in an initramfs that has no libc. Stored as `<cache>/agent/<key>/cell-agent`
 * where key = sha256 of the sources (names and bytes, in name order), the compiler's version line
 * and the flags: a new source or compiler builds a new binary, the same ones never build twice.
 */
const STEP = 'agent';
const GCC_FLAGS = ['-static', '-Os', '-Wall', '-Wextra', '-Werror'];
export const AGENT_BINARY_NAME = 'cell-agent';

export interface AgentBinary {
  path: string;
  /** "sha256:<hex>" of the binary. */
  digest: string;
  key: string;
}

interface AgentManifest {
  key: string;
  sha256: string;
  size: number;
  gcc: string;
  flags: string[];
}

/**
 * The guest/ directory of the repository: the nearest one above this module. Works from both
 * src/host/ (tsx) and dist/src/host/ or dist/host/ (compiled).
 */
export function defaultAgentSource(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'guest'))) return join(dir, 'guest');
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new CellError(ErrorCodes.SETUP_FAILED, `cannot find the guest/ directory above ${fileURLToPath(import.meta.url)}`);
}

/** Builds (or finds in the cache) the agent from the *.c and *.h files in `source` (default: guest/). */
export async function ensureAgent(opts: { cacheDir: string; source?: string; onProgress?: ProgressFn }): Promise<AgentBinary> {
  const source = opts.source ?? defaultAgentSource();
  const files = await readSources(source);
  const units = files.map((f) => f.name).filter((n) => n.endsWith('.c'));
  if (units.length === 0) throw new CellError(ErrorCodes.SETUP_FAILED, `no guest agent source (*.c) in ${source}`);
  const gcc = (await run('gcc', ['--version'])).stdout.split('\n')[0]!.trim();
  const key = sha256Hex(...files.flatMap((f) => [f.name, '\0', f.data, '\0']), gcc, '\0', GCC_FLAGS.join(' '));
  const dir = join(opts.cacheDir, 'agent', key);

  const manifest = await readJsonIfExists<AgentManifest>(join(dir, 'manifest.json'));
  if (manifest?.key === key && (await isFile(join(dir, AGENT_BINARY_NAME)))) {
    opts.onProgress?.({ step: STEP, status: 'cached', detail: key.slice(0, 12) });
    return { path: join(dir, AGENT_BINARY_NAME), digest: `sha256:${manifest.sha256}`, key };
  }

  opts.onProgress?.({ step: STEP, status: 'start', detail: `gcc ${GCC_FLAGS.join(' ')} ${units.join(' ')} (${source})` });
  const work = await makeWorkDir(opts.cacheDir, 'agent');
  try {
    const out = join(work, key);
    await mkdir(out);
    const binary = join(out, AGENT_BINARY_NAME);
    // Compile a copy of exactly the bytes that were hashed, so the key always matches the binary
    // even if someone edits guest/ while we build.
    const copy = join(work, 'src');
    await mkdir(copy);
    for (const f of files) await writeFileSynced(join(copy, f.name), f.data);
    await run('gcc', [...GCC_FLAGS, '-o', binary, ...units], { cwd: copy });
    await fsyncPath(binary);
    const built: AgentManifest = {
      key,
      sha256: await sha256File(binary),
      size: (await stat(binary)).size,
      gcc,
      flags: GCC_FLAGS,
    };
    await writeFileSynced(join(out, 'manifest.json'), JSON.stringify(built, null, 2));
    await publishDir(out, dir, true);
    opts.onProgress?.({ step: STEP, status: 'done', detail: `${key.slice(0, 12)} (${built.size} bytes)` });
    return { path: join(dir, AGENT_BINARY_NAME), digest: `sha256:${built.sha256}`, key };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The *.c and *.h files of the agent, sorted by name so the key does not depend on readdir's order. */
async function readSources(dir: string): Promise<{ name: string; data: Buffer }[]> {
  try {
    const entries = await readdir(dir, { withFileTypes: true });
    // As the shell's guest/*.c would: no hidden files (editor lock files), regular files only.
    const names = entries
      .filter((e) => e.isFile() && !e.name.startsWith('.') && (e.name.endsWith('.c') || e.name.endsWith('.h')))
      .map((e) => e.name)
      .sort();
    return await Promise.all(names.map(async (name) => ({ name, data: await readFile(join(dir, name)) })));
  } catch (err) {
    throw new CellError(ErrorCodes.SETUP_FAILED, `cannot read the guest agent source ${dir}: ${(err as Error).message}`);
  }
}
