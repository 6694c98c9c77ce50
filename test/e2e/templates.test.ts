import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestHome, waitFor } from '../helpers/cell-home.js';
import { webTemplateToml } from '../helpers/web-template.js';

interface TemplateJson {
  name: string;
  templateId: string;
  role: string;
  revision: { id: string; cacheKey: string; warmSnapshot: string | null; diskSnapshot: string; variant: { vcpus: number; memMib: number; dataDiskMib: number } } | null;
  revisions?: { id: string }[];
}

interface VmJson {
  name: string;
  spec: { cpus: number; memoryMib: number; template?: { start: string; reason: string } };
}

// Templates on real VMs: a web server built once, started warm from its snapshot.
describe('templates', () => {
  let h: TestHome;
  let dir: string;
  before(() => {
    h = new TestHome();
    dir = mkdtempSync('/tmp/cellt-tmpl-');
    mkdirSync(join(dir, 'site'));
  });
  after(async () => {
    await h.cleanup();
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(h.qemuPids(), []);
  });

  const templateFile = (page: string) => {
    const file = join(dir, 'web.toml');
    writeFileSync(
      file,
      webTemplateToml(
        page,
        'pool = { size = 1, warm = true }\n',
        `
[[variants]]
role = "small"
name = "web-tiny"
vcpus = 1
mem_mib = 192
data_disk_mib = 16
`,
      ),
    );
    return file;
  };
  const poolOf = async (snapshot: string) => {
    const [s] = JSON.parse((await h.ok(['snapshot', 'inspect', snapshot])).stdout) as { pool?: { size: number; warm: boolean; ready: number } }[];
    return s!.pool ? { size: s!.pool.size, warm: s!.pool.warm } : undefined;
  };
  const templates = async () => JSON.parse((await h.ok(['template', 'ls', '--format', 'json'])).stdout) as TemplateJson[];

  test('template build --snapshot builds each variant into a revision with a warm snapshot', async () => {
    const r = await h.ok(['template', 'build', '--snapshot', templateFile('hello v1')]);
    assert.match(r.stdout, /^web-server\tbuilt\trevision [0-9a-f]{12}\twarm\nweb-tiny\tbuilt\trevision [0-9a-f]{12}\twarm\n$/);
    const list = await templates();
    assert.deepEqual(list.map((t) => [t.name, t.templateId, t.role]), [['web-server', 'web', 'server'], ['web-tiny', 'web', 'small']]);
    for (const t of list) {
      assert.ok(t.revision?.warmSnapshot, `${t.name} has a warm snapshot`);
      assert.match(t.revision.cacheKey, /^[0-9a-f]{64}$/);
    }
    assert.equal(list[1]!.revision!.variant.memMib, 192);
    // The server variant's pool went to its warm snapshot; the other variant has none.
    assert.deepEqual(await poolOf(list[0]!.revision!.warmSnapshot!), { size: 1, warm: true });
    assert.equal(await poolOf(list[1]!.revision!.warmSnapshot!), undefined);
  });

  test('run --template of a server template answers at once, warm from the snapshot', async () => {
    // No retry loop: the server is already listening in the snapshot (here: in the pool's warm spare).
    const warm = (await templates())[0]!.revision!.warmSnapshot!;
    const spareReady = async () => ((JSON.parse((await h.ok(['snapshot', 'inspect', warm])).stdout) as { pool?: { ready: number } }[])[0]!.pool?.ready ?? 0) === 1;
    assert.ok(await waitFor(spareReady, 60_000, 200), "the variant's pool has its spare");
    const r = await h.ok(['run', '--rm', '--template', 'web:server', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/']);
    assert.equal(r.stdout, 'hello v1\n');
    assert.match(r.stderr, /cell: template web-server \(revision [0-9a-f]{12}\): warm start, forked snapshot [0-9a-f]{12}/);
    await h.ok(['run', '-d', '--name', 'tiny', '--template', 'web-tiny']);
    const [vm] = JSON.parse((await h.ok(['inspect', 'tiny'])).stdout) as VmJson[];
    assert.equal(vm?.spec.memoryMib, 192, "the variant's memory");
    assert.equal(vm?.spec.template?.start, 'warm');
    const page = await h.ok(['exec', 'tiny', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/']);
    assert.equal(page.stdout, 'hello v1\n');
    const data = await h.ok(['exec', 'tiny', '--', 'sh', '-c', "mount | grep ' /data ' | cut -d' ' -f5; df -k /data | tail -1 | tr -s ' ' | cut -d' ' -f2"]);
    const [fsType, kib] = data.stdout.trim().split('\n');
    assert.equal(fsType, 'ext4', "the variant's data disk is mounted at /data");
    assert.ok(Number(kib) > 8000 && Number(kib) <= 16384, `about 16 MiB (${kib} KiB)`);
    await h.ok(['rm', '-f', 'tiny']);
  });

  test('an unchanged rebuild is a no-op; a changed build makes a new revision', async () => {
    const before = await templates();
    const again = await h.ok(['template', 'build', '--snapshot', templateFile('hello v1')]);
    assert.match(again.stdout, /web-server\tunchanged/);
    assert.match(again.stderr, /CACHED/);
    assert.doesNotMatch(again.stderr, /building a new revision/);
    assert.deepEqual(await templates(), before, 'same revisions, same snapshots');

    const changed = await h.ok(['template', 'build', '--snapshot', templateFile('hello v2')]);
    assert.match(changed.stdout, /web-server\tbuilt/);
    const after = await templates();
    assert.notEqual(after[0]!.revision!.id, before[0]!.revision!.id);
    const r = await h.ok(['run', '--rm', '--template', 'web-server', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/']);
    assert.equal(r.stdout, 'hello v2\n');
    const inspected = JSON.parse((await h.ok(['template', 'inspect', 'web-server'])).stdout) as TemplateJson[];
    assert.equal(inspected[0]!.revisions!.length, 2, 'the previous revision is kept');
    assert.deepEqual(await poolOf(after[0]!.revision!.warmSnapshot!), { size: 1, warm: true }, 'the pool moved to the new revision');
    assert.equal(await poolOf(before[0]!.revision!.warmSnapshot!), undefined, "and left the previous one's snapshot");
  });

  test('without a snapshot, run --template cold-boots the built disk, starts the service and says so', async () => {
    const file = join(dir, 'cold.toml');
    writeFileSync(
      file,
      `template_id = "cold"
[build]
base = "busybox"
[[build.step]]
run = "mkdir -p /www && echo cold-page > /www/index.html"
[service]
start = "httpd -f -p 8081 -h /www"
ready = "wget -q -O /dev/null http://127.0.0.1:8081/"
[[variants]]
role = "web"
vcpus = 1
mem_mib = 256
`,
    );
    const built = await h.ok(['template', 'build', file]);
    assert.match(built.stdout, /cold-web\tbuilt\trevision [0-9a-f]{12}\tcold/);
    const r = await h.ok(['run', '--rm', '--template', 'cold', '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8081/']);
    assert.equal(r.stdout, 'cold-page\n');
    assert.match(r.stderr, /cold boot, the revision has no snapshot \(build it with --snapshot\)/);
  });

  test('bad references and files are clear errors', async () => {
    const ambiguous = await h.cell(['run', '--rm', '--template', 'web', '--', 'true']);
    assert.equal(ambiguous.code, 125);
    assert.match(ambiguous.stderr, /template web has several roles: say which, e\.g\. web:server/);
    const unknown = await h.cell(['run', '--rm', '--template', 'web:nope', '--', 'true']);
    assert.match(unknown.stderr, /no template web with role nope \(roles: server, small\)/);
    const bad = join(dir, 'bad.toml');
    writeFileSync(bad, 'template_id = "x"\n[build]\nbase = "busybox"\n[[build.step]]\nrun = "true"\n[[variants]]\nrole = "a"\nvcpus = 1\n');
    const r = await h.cell(['template', 'build', bad]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: bad\.toml:6: a variant needs vcpus and mem_mib/);
  });

  test('template rm removes the variants and their warm snapshots', async () => {
    const warm = (await templates()).map((t) => t.revision?.warmSnapshot).filter(Boolean);
    const r = await h.ok(['template', 'rm', 'web']);
    assert.equal(r.stdout, 'web-server\nweb-tiny\n');
    const snapshots = (JSON.parse((await h.ok(['snapshots', '--format', 'json'])).stdout) as { id: string }[]).map((s) => s.id);
    for (const id of warm) assert.ok(!snapshots.includes(id!), 'warm snapshot removed');
    assert.deepEqual((await templates()).map((t) => t.name), ['cold-web']);
  });
});
