import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseBuildFile } from '../../src/domain/build-file.js';
import { CellError } from '../../src/domain/errors.js';

function fails(text: string, pattern: RegExp): void {
  assert.throws(
    () => parseBuildFile('build.toml', text, '/ctx'),
    (err: unknown) => {
      assert.ok(err instanceof CellError, String(err));
      assert.equal(err.code, 'bad_build_file');
      assert.match(err.message, pattern);
      return true;
    },
  );
}

test('a build file becomes a plan: base, steps in order, each growing from the previous', () => {
  const plan = parseBuildFile(
    'build.toml',
    `base = "busybox"
memory_mib = 128

[[step]]
run = "echo hi > /greeting"

[[step]]
copy = "site"
to = "/www"

[[step]]
env = { PORT = "8080", MODE = "dev" }

[[step]]
workdir = "/www"

[[step]]
run = ["httpd", "-f", "-p", "8080"]
detach = true
ready = "wget -q -O /dev/null http://127.0.0.1:8080/"
ready_timeout = 20
`,
    '/ctx',
  );
  assert.deepEqual(plan.base, { image: 'busybox' });
  assert.equal(plan.memoryMib, 128);
  assert.deepEqual(plan.chain, [0, 1, 2, 3, 4]);
  const [run, copy, env, workdir, server] = plan.steps;
  assert.deepEqual(run, { index: 0, name: undefined, parent: -1, line: 4, kind: 'run', cmd: ['/bin/sh', '-c', 'echo hi > /greeting'], timeoutSec: undefined, detach: false, ready: undefined, user: undefined });
  assert.equal(copy?.kind === 'copy' && copy.hostPath, '/ctx/site');
  assert.deepEqual(env?.kind === 'env' && env.env, ['PORT=8080', 'MODE=dev']);
  assert.equal(workdir?.kind === 'workdir' && workdir.dir, '/www');
  assert.ok(server?.kind === 'run');
  assert.deepEqual(server.cmd, ['httpd', '-f', '-p', '8080']);
  assert.equal(server.detach, true);
  assert.deepEqual(server.ready, { cmd: ['/bin/sh', '-c', 'wget -q -O /dev/null http://127.0.0.1:8080/'], timeoutSec: 20 });
  assert.equal(server.line, 17);
});

test('from names another step; only the chain to the target is built', () => {
  const plan = parseBuildFile(
    'b.toml',
    `from = "warm"
target = "b"
[[step]]
name = "a"
run = "true"
[[step]]
name = "side"
run = "false"
[[step]]
name = "b"
from = "a"
run = "true"
`,
    '/',
  );
  assert.deepEqual(plan.base, { snapshot: 'warm' });
  assert.deepEqual(plan.chain, [0, 2]);
  assert.equal(plan.steps[2]?.parent, 0);
});

test('unknown keys, missing base and bad values are errors with line numbers', () => {
  fails('base = "busybox"\n\n[[step]]\nrun = "true"\nrnu = "x"\n', /^build\.toml:5: unknown key "rnu" in a run step/);
  fails('[[step]]\nrun = "true"\n', /^build\.toml: a build needs exactly one of base = "IMAGE" or from = "SNAPSHOT"/);
  fails('base = "busybox"\nfrom = "snap"\n[[step]]\nrun = "true"\n', /exactly one of base/);
  fails('base = "busybox"\nbogus = 1\n[[step]]\nrun = "true"\n', /^build\.toml:2: unknown key "bogus" in a build/);
  fails('base = "busybox"\n[[step]]\nrun = "true"\ncopy = "x"\n', /^build\.toml:2: step 1 needs exactly one of run, copy, env, workdir \(it has run and copy\)/);
  fails('base = "busybox"\n[[step]]\nname = "x"\n', /^build\.toml:2: step 1 needs exactly one of/);
  fails('base = "busybox"\n[[step]]\nrun = 5\n', /^build\.toml:3: run must be a string/);
  fails('base = "busybox"\n[[step]]\nrun = "httpd"\ndetach = true\n', /^build\.toml:4: detach = true needs a ready check/);
  fails('base = "busybox"\n[[step]]\nenv = { "1BAD" = "x" }\n', /^build\.toml:3: "1BAD" is not a valid environment variable name/);
  fails('base = "busybox"\ncpus = 0\n[[step]]\nrun = "true"\n', /^build\.toml:2: cpus must be a whole number >= 1/);
  fails('base = "busybox"\n', /a build needs at least one \[\[step\]\]/);
});

test('step names: unknown from, duplicates and cycles are refused with the lines involved', () => {
  fails('base = "b"\n[[step]]\nfrom = "nope"\nrun = "true"\n', /^build\.toml:3: from = "nope" names no step/);
  fails('base = "b"\n[[step]]\nname = "x"\nrun = "true"\n[[step]]\nname = "x"\nrun = "true"\n', /^build\.toml:6: two steps are named "x" \(the first at line 2\)/);
  fails(
    'base = "b"\n[[step]]\nname = "a"\nfrom = "c"\nrun = "true"\n[[step]]\nname = "b"\nrun = "true"\n[[step]]\nname = "c"\nrun = "true"\n',
    /the steps form a cycle: a \(line 2\) -> c \(line 9\) -> b \(line 6\) -> a/,
  );
  fails('base = "b"\n[[step]]\nrun = "true"\ntarget = "zz"\n', /unknown key "target" in a run step/);
  fails('base = "b"\ntarget = "zz"\n[[step]]\nrun = "true"\n', /^build\.toml:2: no step is named "zz"/);
});

test('bad TOML says where', () => {
  fails('base = "busybox"\n[[step]]\nrun = "unterminated\n', /^build\.toml:3:\d+: bad TOML/);
  fails('base = "busybox"\n[[step]\n', /^build\.toml:2:\d+: bad TOML/);
});

test('multi-line strings and arrays do not confuse the line map', () => {
  fails(
    'base = "busybox"\n[[step]]\nrun = """\nfake = 1\n[[step]]\n"""\n[[step]]\nrun = [\n  "a",\n]\nwat = 1\n',
    /^build\.toml:11: unknown key "wat"/,
  );
});

test('copy stays in the build file folder: ../ and absolute paths elsewhere are refused with their line', () => {
  fails('base = "busybox"\n[[step]]\ncopy = "../../etc/shadow"\n', /^build\.toml:3: copy "\.\.\/\.\.\/etc\/shadow" is outside the build file's folder \/ctx/);
  fails('base = "busybox"\n[[step]]\nrun = "true"\n[[step]]\ncopy = "/root/.ssh"\n', /^build\.toml:5: copy "\/root\/\.ssh" is outside the build file's folder/);
  fails('base = "busybox"\n[[step]]\ncopy = "site/../../ctx2"\n', /outside the build file's folder/);
  const ok = parseBuildFile('build.toml', 'base = "busybox"\n[[step]]\ncopy = "/ctx/site/../app"\n[[step]]\ncopy = "."\n', '/ctx');
  assert.deepEqual(ok.steps.map((s) => (s.kind === 'copy' ? s.hostPath : '')), ['/ctx/app', '/ctx']);
  assert.equal(ok.contextDir, '/ctx');
});

test("a build file's ports: guest ports for the result's forks (free host ports on 127.0.0.1); anything else is refused with the line", () => {
  const plan = parseBuildFile('build.toml', `base = "busybox"\nports = [8080, "53/udp"]\n[[step]]\nrun = "true"\n`, '/ctx');
  assert.deepEqual(plan.ports, [
    { hostIp: '127.0.0.1', hostPort: 0, guestPort: 8080, protocol: 'tcp' },
    { hostIp: '127.0.0.1', hostPort: 0, guestPort: 53, protocol: 'udp' },
  ]);
  assert.equal(parseBuildFile('build.toml', `base = "busybox"\n[[step]]\nrun = "true"\n`, '/ctx').ports, undefined);
  fails(`base = "busybox"\nports = ["8080:80"]\n[[step]]\nrun = "true"\n`, /^build\.toml:2: ports = \[8080, "53\/udp"\]: guest ports/);
  fails(`base = "busybox"\nports = [70000]\n[[step]]\nrun = "true"\n`, /^build\.toml:2: ports/);
  fails(`base = "busybox"\nports = "80"\n[[step]]\nrun = "true"\n`, /^build\.toml:2: ports/);
});

test("a build file's [healthcheck]: the result's forks are probed with it (Docker's HEALTHCHECK); bad values are refused with the line", () => {
  const plan = parseBuildFile('build.toml', `base = "busybox"\n[healthcheck]\ncmd = "wget -q -O /dev/null http://127.0.0.1/"\ninterval = "5s"\ntimeout = 2\nretries = 4\nstart_period = "1m"\n[[step]]\nrun = "true"\n`, '/ctx');
  assert.deepEqual(plan.health, { cmd: ['/bin/sh', '-c', 'wget -q -O /dev/null http://127.0.0.1/'], intervalMs: 5000, timeoutMs: 2000, retries: 4, startPeriodMs: 60_000 });
  assert.deepEqual(parseBuildFile('build.toml', `base = "busybox"\nhealthcheck = { cmd = ["test", "-f", "/ok"] }\n[[step]]\nrun = "true"\n`, '/ctx').health?.cmd, ['test', '-f', '/ok']);
  assert.equal(parseBuildFile('build.toml', `base = "busybox"\n[[step]]\nrun = "true"\n`, '/ctx').health, undefined);
  fails(`base = "busybox"\n[healthcheck]\ninterval = "5s"\n[[step]]\nrun = "true"\n`, /^build\.toml:2: healthcheck needs cmd/);
  fails(`base = "busybox"\n[healthcheck]\ncmd = "true"\nintervall = "5s"\n[[step]]\nrun = "true"\n`, /^build\.toml:4: unknown key "intervall" in healthcheck/);
  fails(`base = "busybox"\n[healthcheck]\ncmd = "true"\ninterval = "soon"\n[[step]]\nrun = "true"\n`, /^build\.toml:4: interval must be a duration/);
  fails(`base = "busybox"\n[healthcheck]\ncmd = "true"\ninterval = "10ms"\n[[step]]\nrun = "true"\n`, /^build\.toml:2: interval 10ms is out of range/);
  fails(`base = "busybox"\nhealthcheck = "true"\n[[step]]\nrun = "true"\n`, /^build\.toml:2: healthcheck must be a table/);
});

test("a build file's volumes: named volumes every step's VM mounts; host folders, a snapshot base and bad mounts are refused with the line", () => {
  const plan = parseBuildFile('build.toml', `base = "busybox"\nvolumes = ["pip:/root/.cache/pip", "ref:/ref:ro"]\n[[step]]\nrun = "true"\n`, '/ctx');
  assert.deepEqual(plan.volumes, ['pip:/root/.cache/pip', 'ref:/ref:ro']);
  assert.equal(parseBuildFile('build.toml', `base = "busybox"\n[[step]]\nrun = "true"\n`, '/ctx').volumes, undefined);
  fails(`base = "busybox"\nvolumes = ["/home/me/src:/src"]\n[[step]]\nrun = "true"\n`, /build\.toml:2: .*host folders cannot be in a build/);
  fails(`from = "warm"\nvolumes = ["pip:/p"]\n[[step]]\nrun = "true"\n`, /build\.toml:2: volumes apply to a base image only/);
  fails(`base = "busybox"\nvolumes = ["pip"]\n[[step]]\nrun = "true"\n`, /build\.toml:2: .*use NAME:\/guest\/path/);
  fails(`base = "busybox"\nvolumes = "pip:/p"\n[[step]]\nrun = "true"\n`, /build\.toml:2: .*an array of strings/);
});
