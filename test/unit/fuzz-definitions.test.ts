/**
 * Fuzz-style properties for input that comes from files a user was handed: build files, template
 * files and snapshot archives' metadata. Whatever the text, parsing either returns a plan or
 * throws a CellError with the file's own code and one line; it never throws anything else, and a
 * copy path it accepts stays inside the build file's folder. FUZZ_RUNS=N for longer runs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseBuildFile, isWithin } from '../../src/domain/build-file.js';
import { CellError } from '../../src/domain/errors.js';
import { parseArchiveMeta } from '../../src/domain/snapshot-archive.js';
import { parseTemplateFile } from '../../src/domain/template-file.js';
import { fuzzParams } from '../agent/fuzz-runs.js';

/** TOML-ish text: fragments of real keys and values, shuffled and mangled. */
const tomlText = fc
  .array(
    fc.oneof(
      fc.constantFrom('base = "busybox"', 'from = "warm"', '[[step]]', 'run = "true"', 'run = ["a", "b"]', 'copy = "site"', 'copy = "../x"', 'copy = "/etc"', 'to = "/www"', 'env = { A = "1" }', 'workdir = "/w"', 'name = "s1"', 'from = "s1"', 'detach = true', 'ready = "true"', 'timeout = 5', 'cpus = 2', 'memory_mib = 128', 'target = "s1"', '[build]', '[service]', 'cmd = "httpd"', '[[variant]]', 'name = "web"', 'role = "server"', 'vcpus = 1', 'data_disk_mib = 10', 'pool = 3', 'pool = { size = 2, warm = true }', 'pool = 99', 'schema = 1', 'template = "t"'),
      fc.string({ maxLength: 40 }),
    ),
    { maxLength: 25 },
  )
  .map((lines) => lines.join('\n'));

function onlyCellErrors(code: string, fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof CellError, `not a CellError: ${String(err)}`);
    assert.equal(err.code, code);
    assert.doesNotMatch(err.message, /\n/);
  }
}

test('build files: a plan or a bad_build_file error, and accepted copies stay in the folder', () => {
  fc.assert(
    fc.property(tomlText, (text) => {
      onlyCellErrors('bad_build_file', () => {
        const plan = parseBuildFile('build.toml', text, '/ctx');
        for (const step of plan.steps) if (step.kind === 'copy') assert.ok(isWithin('/ctx', step.hostPath), step.hostPath);
        for (const i of plan.chain) assert.ok(plan.steps[i]);
      });
    }),
    fuzzParams(300),
  );
});

test('template files: a template or a bad_build_file error', () => {
  fc.assert(
    fc.property(tomlText, (text) => onlyCellErrors('bad_build_file', () => parseTemplateFile('t.toml', text, '/ctx'))),
    fuzzParams(300),
  );
});

test("snapshot archives' metadata: a checked record or an invalid_argument error", () => {
  const good = {
    format: 'cellvm-snapshot/1',
    snapshot: {
      id: 'a'.repeat(64),
      name: 'warm',
      parentVmName: 'x',
      spec: { image: 'busybox', imageDigest: `sha256:${'b'.repeat(64)}`, cpus: 1, memoryMib: 64, cmd: [], env: [], workingDir: '/', user: '0:0', timeoutSec: 0, autoRemove: false },
      compat: { qemuVersion: 'q', machine: 'm', cpuModel: 'c', accelerator: 'tcg', kernelDigest: 'k', initramfsDigest: 'i' },
      createdAt: new Date(0).toISOString(),
    },
  };
  // Start from a good document and replace one value anywhere in it with anything JSON can hold.
  const paths: string[][] = [];
  const walk = (v: unknown, at: string[]) => {
    paths.push(at);
    if (v && typeof v === 'object') for (const [k, child] of Object.entries(v)) walk(child, [...at, k]);
  };
  walk(good, []);
  fc.assert(
    fc.property(fc.constantFrom(...paths.filter((p) => p.length > 0)), fc.jsonValue(), (path, value) => {
      const doc = structuredClone(good) as Record<string, unknown>;
      let at: Record<string, unknown> = doc;
      for (const key of path.slice(0, -1)) at = at[key] as Record<string, unknown>;
      at[path.at(-1)!] = value;
      onlyCellErrors('invalid_argument', () => {
        const record = parseArchiveMeta('a.tar', JSON.stringify(doc));
        assert.match(record.id, /^[0-9a-f]{64}$/);
        assert.equal(record.parentVm, null);
        assert.ok(record.spec.workingDir.startsWith('/'));
      });
    }),
    fuzzParams(500),
  );
  onlyCellErrors('invalid_argument', () => parseArchiveMeta('a.tar', '{"format":'));
});
