import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { registryBlobPath, startRegistry, type RunningRegistry } from '../image/registry-harness.js';
import { TestHome } from '../helpers/cell-home.js';
import { webTemplateToml } from '../helpers/web-template.js';
import { CellClient } from '../../src/sdk/index.js';

/**
 * Snapshots through a real registry (CNCF Distribution on loopback, with basic auth): push a
 * snapshot of a VM whose counter runs, push a child (only what changed is sent: counted at the
 * registry), pull both into other homes (another host's CELL_HOME) and fork them (the counter goes
 * on); a tampered RAM chunk is refused and leaves nothing; an artifact whose compatibility key does
 * not match this host is refused before any RAM is fetched. Templates too: a variant's revision
 * pushed, pulled into another home and run warm there.
 */
const COUNTER = 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done';

function blobsAt(registry: RunningRegistry): Set<string> {
  const dir = join(registry.storage, 'docker', 'registry', 'v2', 'blobs', 'sha256');
  if (!existsSync(dir)) return new Set();
  return new Set(readdirSync(dir).flatMap((prefix) => readdirSync(join(dir, prefix))));
}

/** Bytes of the registry's blobs not in `before`. */
function newBytes(registry: RunningRegistry, before: Set<string>): number {
  return [...blobsAt(registry)].filter((hex) => !before.has(hex)).reduce((sum, hex) => sum + statSync(registryBlobPath(registry.storage, `sha256:${hex}`)).size, 0);
}

function pulledLeftovers(h: TestHome): string[] {
  const dir = join(h.home, 'snapshots');
  const stray = existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith('.pull-')) : [];
  const vms = existsSync(join(h.home, 'snapshots')) ? readdirSync(join(h.home, 'snapshots')).filter((f) => /^[0-9a-f]{64}$/.test(f)) : [];
  return [...stray, ...vms];
}

describe('snapshot push and pull', () => {
  let registry: RunningRegistry;
  const homes: TestHome[] = [];
  const home = () => {
    const h = new TestHome();
    homes.push(h);
    return h;
  };
  let repo = '';

  before(async () => {
    registry = await startRegistry({ kind: 'basic', user: 'cell', password: 'sekrit' });
    repo = `${registry.host}/e2e/snap`;
  });
  after(async () => {
    for (const h of homes) await h.cleanup();
    await registry?.stop();
  });

  test('push a running VM, then a child with only its changes; pull both elsewhere and fork: the guest goes on', async (t) => {
    const a = home();
    await a.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const vm = (await a.ok(['run', '-d', '--name', 'counter', 'busybox', '--', 'sh', '-c', COUNTER])).stdout.trim();
    await a.ok(['exec', vm, '--', 'sh', '-c', 'while [ ! -s /tmp/count ]; do sleep 0.05; done']);
    await a.ok(['snapshot', '--name', 'base', vm]);
    const countAtBase = Number((await a.ok(['exec', vm, '--', 'cat', '/tmp/count'])).stdout);

    const unauthenticated = await home().cell(['snapshot', 'pull', `${repo}:base`]);
    assert.equal(unauthenticated.code, 1, 'nothing to pull yet, and no credentials');

    const before = blobsAt(registry);
    const base = await a.ok(['snapshot', 'push', 'base', `${repo}:base`]);
    t.diagnostic(base.stdout.trim());
    const afterBase = blobsAt(registry);
    const sentBase = Number(/sent (\d+) blobs/.exec(base.stdout)![1]);
    // Distribution keeps the manifest as a blob too.
    assert.equal(afterBase.size - before.size, sentBase + 1, 'every blob push says it sent is new at the registry');
    assert.ok(sentBase >= 4, 'state, disk, config and RAM chunks');

    // The child: the same guest a moment later, with one new file.
    await a.ok(['exec', vm, '--', 'sh', '-c', 'echo child > /root/child']);
    await a.ok(['snapshot', '--name', 'child', vm]);
    const child = await a.ok(['snapshot', 'push', 'child', `${repo}:child`]);
    t.diagnostic(child.stdout.trim());
    const [, sent, , had] = /sent (\d+) blobs \(([^)]*)\), (\d+) the registry had/.exec(child.stdout)!.map(String);
    assert.equal(blobsAt(registry).size - afterBase.size, Number(sent) + 1, 'the registry holds exactly the blobs push sent, and the manifest');
    assert.ok(Number(had) > Number(sent), `the child sent ${sent} blobs and skipped ${had}: most of its RAM is its parent's`);
    // Its disk went as the overlay it wrote over the base's disk, which the registry had.
    const childManifest = JSON.parse(readFileSync(registryBlobPath(registry.storage, /@(sha256:[0-9a-f]{64})/.exec(child.stdout)![1]!), 'utf8')) as { layers: { mediaType: string; size: number }[] };
    const disks = childManifest.layers.filter((l) => l.mediaType.includes('disk'));
    assert.deepEqual(disks.map((l) => l.mediaType), ['application/vnd.cellvm.snapshot.disk.v1+qcow2', 'application/vnd.cellvm.snapshot.disk-delta.v1+qcow2']);
    assert.ok(disks[1]!.size < disks[0]!.size / 2, `the delta is ${disks[1]!.size} bytes against the whole disk's ${disks[0]!.size}`);
    const baseBytes = newBytes(registry, before);
    const childBytes = newBytes(registry, afterBase);
    t.diagnostic(`at the registry: the base added ${baseBytes} bytes, the child ${childBytes}`);
    // Its RAM costs its changed pages; its disk goes whole again (a flattened qcow2, ~3.5 MiB here).
    assert.ok(childBytes < baseBytes * 0.3, `the child added ${childBytes} bytes against the base's ${baseBytes}: its changed pages and its disk, not its RAM again`);

    // Another host (its own CELL_HOME): pull the child, fork it; the counter continues from the snapshot.
    const b = home();
    await b.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const pulled = (await b.ok(['snapshot', 'pull', `${repo}:child`])).stdout.trim();
    assert.match(pulled, /^[0-9a-f]{64}$/);
    const [info] = JSON.parse((await b.ok(['snapshot', 'inspect', 'child'])).stdout) as { id: string; name: string }[];
    assert.equal(info!.id, pulled);
    const [fork] = (await b.ok(['fork', 'child'])).stdout.trim().split('\n');
    assert.equal((await b.ok(['exec', fork!, '--', 'cat', '/root/child'])).stdout, 'child\n');
    const first = Number((await b.ok(['exec', fork!, '--', 'cat', '/tmp/count'])).stdout);
    await new Promise((r) => setTimeout(r, 600));
    const later = Number((await b.ok(['exec', fork!, '--', 'cat', '/tmp/count'])).stdout);
    assert.ok(first >= countAtBase, `the fork starts where the child was taken (${first} >= ${countAtBase})`);
    assert.ok(later > first, `its counter goes on (${first} -> ${later})`);
    assert.equal(readdirSync(join(b.home, 'snapshots', '.blobs', 'blobs', 'sha256')).length, 0, 'the fetched blobs are gone once the snapshot is adopted');

    // The same reference again: it is here already, nothing is fetched; run --from the reference uses it.
    assert.equal((await b.ok(['snapshot', 'pull', `${repo}:child`])).stdout.trim(), pulled);
    assert.equal((await b.ok(['run', '--rm', '--from', `${repo}:child`, '--', 'cat', '/root/child'])).stdout, 'child\n');
    assert.equal(JSON.parse((await b.ok(['snapshots', '--format', 'json'])).stdout).length, 1);

    // system df: the pulled snapshot's RAM file counts whole as size, by its blocks as used.
    const df = JSON.parse((await b.ok(['system', 'df', '--format', 'json'])).stdout) as Record<string, { count: number; logicalBytes: number; usedBytes: number }>;
    assert.equal(df.snapshots!.count, 1);
    assert.ok(df.snapshots!.logicalBytes >= 256 * 1024 * 1024, `logical ${df.snapshots!.logicalBytes}`);
    assert.ok(df.snapshots!.usedBytes < df.snapshots!.logicalBytes / 2, `used ${df.snapshots!.usedBytes} of ${df.snapshots!.logicalBytes}: the RAM file is sparse`);
    assert.ok(df.vms!.count >= 1 && df.vms!.usedBytes > 0);
    assert.equal(df.total!.usedBytes, ['images', 'snapshots', 'vms', 'volumes'].reduce((n, k) => n + df[k]!.usedBytes, 0));
    assert.match((await b.ok(['system', 'df'])).stdout, /^TYPE\s+COUNT\s+SIZE\s+ON DISK\n(.*\n)*Snapshots\s+1\s+2\d\d(\.\d)? MiB\s+\d/m);
    // Whether this home shares RAM between snapshots depends on its file system: said either way.
    assert.match((await b.ok(['system', 'df'])).stdout, /^Snapshot RAM: stored (whole|by what changed) \(.+\)$/m);

    // A third host forks the reference without pulling first: pulled on first use, once.
    const d = home();
    await d.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const [f1] = (await d.ok(['fork', `${repo}:base`])).stdout.trim().split('\n');
    const [f2] = (await d.ok(['fork', `${repo}:base`])).stdout.trim().split('\n');
    assert.notEqual(f1, f2);
    const onD = JSON.parse((await d.ok(['snapshots', '--format', 'json'])).stdout) as { name: string }[];
    assert.deepEqual(onD.map((s) => s.name), ['base'], 'pulled once');
    assert.ok(Number((await d.ok(['exec', f2!, '--', 'cat', '/tmp/count'])).stdout) >= countAtBase - 1);
    // The child pulled where its parent is: the RAM chunks they share come from the parent's file.
    const childHere = await d.ok(['snapshot', 'pull', `${repo}:child`]);
    const [, fetchedBlobs, reusedChunks] = /^fetched (\d+) blobs \([^)]*\); (\d+) \([^)]*\) came from snapshots here$/m.exec(childHere.stderr) ?? [];
    t.diagnostic(childHere.stderr.trim());
    assert.ok(Number(reusedChunks) >= 10, `RAM chunks and the disk taken from the parent here: ${reusedChunks}`);
    assert.ok(!/fetched \d+ blobs \(-/.test(childHere.stderr));
    assert.ok(Number(fetchedBlobs) <= Number(sent) + 1, `fetched ${fetchedBlobs} blobs: what the child's push sent, and its config`);
    const [fc] = (await d.ok(['fork', 'child'])).stdout.trim().split('\n');
    assert.equal((await d.ok(['exec', fc!, '--', 'cat', '/root/child'])).stdout, 'child\n');
    assert.ok(Number((await d.ok(['exec', fc!, '--', 'cat', '/tmp/count'])).stdout) >= countAtBase);
    // Through the SDK, with the progress it streams: bytes dealt with grow to the whole.
    const e = home();
    await e.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const client = await CellClient.connect({ home: e.home });
    try {
      const seen: [number, number][] = [];
      const viaSdk = await client.snapshots.pull(`${repo}:child`, { onProgress: (done, total) => seen.push([done, total]) });
      assert.equal(viaSdk.id, pulled);
      assert.ok(seen.length >= 3, `${seen.length} progress events`);
      assert.deepEqual(seen[0], [0, seen.at(-1)![1]]);
      assert.equal(seen.at(-1)![0], seen.at(-1)![1]);
      assert.ok(seen.every(([done], i) => i === 0 || done >= seen[i - 1]![0]), 'never goes back');
    } finally {
      client.close();
    }
    await a.ok(['rm', '-f', vm]);
  });

  test('template push and pull: another home runs the template warm; a tampered part leaves none of its snapshots behind', async (t) => {
    const a = home();
    await a.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const dir = join(a.home, 'tmpl');
    mkdirSync(dir);
    const file = join(dir, 'web.toml');
    writeFileSync(file, webTemplateToml('hello from the registry'));
    await a.ok(['template', 'build', '--snapshot', file]);
    const [built] = JSON.parse((await a.ok(['template', 'ls', '--format', 'json'])).stdout) as { revision: { id: string; warmSnapshot: string; diskSnapshot: string } }[];
    const ref = `${registry.host}/e2e/tmpl:v1`;
    const pushed = await a.ok(['template', 'push', 'web-server', ref]);
    t.diagnostic(pushed.stdout.trim());
    assert.match(pushed.stdout, new RegExp(`^${ref.replace(/[.]/g, '\\.')}@sha256:[0-9a-f]{64}: sent \\d+ blobs`));

    // Pulling a snapshot as a template, or the template as a snapshot, says which command it takes.
    const b = home();
    await b.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    assert.match((await b.cell(['snapshot', 'pull', ref])).stderr, /^error: .* is not a cellvm snapshot .*: pull it with cell template pull\n$/);
    assert.match((await b.cell(['template', 'pull', `${repo}:base`])).stderr, /^error: .* is not a cellvm template .*: pull it with cell snapshot pull\n$/);

    // Another home: pull, and the same revision (same snapshots, same id) is its current one; run it warm.
    assert.match((await b.ok(['template', 'pull', ref])).stdout, /^web-server\trevision [0-9a-f]{12}\twarm\n$/);
    const [here] = JSON.parse((await b.ok(['template', 'ls', '--format', 'json'])).stdout) as { name: string; templateId: string; role: string; revision: { id: string; warmSnapshot: string; diskSnapshot: string; variant: { memMib: number } } }[];
    assert.deepEqual([here!.name, here!.templateId, here!.role], ['web-server', 'web', 'server']);
    assert.equal(here!.revision.id, built!.revision.id);
    assert.equal(here!.revision.warmSnapshot, built!.revision.warmSnapshot);
    assert.equal(here!.revision.diskSnapshot, built!.revision.diskSnapshot);
    assert.equal(here!.revision.variant.memMib, 256);
    const vm = (await b.ok(['run', '-d', '--name', 'w', '--template', 'web-server'])).stdout.trim();
    const [inspected] = JSON.parse((await b.ok(['inspect', vm])).stdout) as { spec: { template: { start: string } } }[];
    assert.equal(inspected!.spec.template.start, 'warm', 'forked from the pulled warm snapshot, service already up');
    assert.equal((await b.ok(['exec', vm, '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/'])).stdout, 'hello from the registry\n');
    await b.ok(['rm', '-f', vm]);
    // Its cold path works too: the built disk came along.
    assert.equal(JSON.parse((await b.ok(['snapshots', '--format', 'json'])).stdout).length, 2);
    assert.match((await b.ok(['template', 'pull', ref])).stdout, /^web-server\trevision/, 'pulling again keeps what is here');
    assert.equal(JSON.parse((await b.ok(['snapshots', '--format', 'json'])).stdout).length, 2);

    // run --template with the registry reference pulls on first use; later runs use what is here
    // (logged out, so a second pull could not have happened).
    const d = home();
    await d.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const first = await d.ok(['run', '--rm', '--template', ref, '--', 'wget', '-q', '-O-', 'http://127.0.0.1:8080/'], { timeoutMs: 300_000 });
    assert.equal(first.stdout, 'hello from the registry\n');
    await d.ok(['logout', registry.host]);
    assert.equal((await d.ok(['run', '--rm', '--template', ref, '--', 'cat', '/www/index.html'])).stdout, 'hello from the registry\n');
    assert.deepEqual((JSON.parse((await d.ok(['template', 'ls', '--format', 'json'])).stdout) as { name: string }[]).map((x) => x.name), ['web-server']);

    // A RAM chunk only the warm snapshot has, changed at the registry: the pull fails after the disk
    // part was fetched, and removes it again; no template is recorded.
    const auth = { authorization: `Basic ${Buffer.from('cell:sekrit').toString('base64')}` };
    const get = async (selector: string, accept: string) => {
      const res = await fetch(`http://${registry.host}/v2/e2e/tmpl/manifests/${selector}`, { headers: { ...auth, accept } });
      assert.equal(res.status, 200);
      return JSON.parse(await res.text()) as { manifests: { digest: string; annotations: Record<string, string> }[]; layers: { mediaType: string; digest: string }[] };
    };
    const index = await get('v1', 'application/vnd.oci.image.index.v1+json');
    const part = async (which: string) => get(index.manifests.find((m) => m.annotations['dev.cellvm.template.part'] === which)!.digest, 'application/vnd.oci.image.manifest.v1+json');
    const diskLayers = new Set((await part('disk')).layers.map((l) => l.digest));
    // A RAM chunk of its own, or else its pages layer: a warm snapshot whose RAM is close enough to
    // the disk snapshot's goes up as their chunks plus the pages that differ (as on a guest kernel
    // without address-space randomisation).
    const warmOnly = (await part('warm')).layers.filter((l) => l.mediaType.startsWith('application/vnd.cellvm.snapshot.memory') && !diskLayers.has(l.digest));
    const chunk = warmOnly.find((l) => l.mediaType === 'application/vnd.cellvm.snapshot.memory.v1+gzip') ?? warmOnly.find((l) => l.mediaType === 'application/vnd.cellvm.snapshot.memory-pages.v1');
    assert.ok(chunk, 'the warm part has RAM of its own');
    const path = registryBlobPath(registry.storage, chunk.digest);
    const bytes = readFileSync(path);
    bytes[100] = bytes[100]! ^ 0xff;
    writeFileSync(path, bytes);
    const c = home();
    await c.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const tampered = await c.cell(['template', 'pull', ref]);
    assert.equal(tampered.code, 1);
    assert.match(tampered.stderr, /^error: .*(digest|sha256)/i);
    assert.deepEqual(JSON.parse((await c.ok(['snapshots', '--format', 'json'])).stdout), [], 'the disk part it had pulled is gone again');
    assert.deepEqual(JSON.parse((await c.ok(['template', 'ls', '--format', 'json'])).stdout), []);
    assert.deepEqual(pulledLeftovers(c), []);
  });

  test('a tampered RAM chunk is refused and leaves nothing; a snapshot for another host is refused before its RAM is fetched', async () => {
    const c = home();
    await c.ok(['login', '-u', 'cell', '--password-stdin', registry.host], { input: 'sekrit\n' });
    const manifestOf = async (tag: string) => {
      const res = await fetch(`http://${registry.host}/v2/e2e/snap/manifests/${tag}`, {
        headers: { accept: 'application/vnd.oci.image.manifest.v1+json', authorization: `Basic ${Buffer.from('cell:sekrit').toString('base64')}` },
      });
      assert.equal(res.status, 200);
      return JSON.parse(await res.text()) as { config: { digest: string; size: number }; layers: { mediaType: string; digest: string }[] };
    };

    // An incompatible host: the base's config with another QEMU version, pushed under a new tag.
    const manifest = await manifestOf('base');
    const config = JSON.parse(readFileSync(registryBlobPath(registry.storage, manifest.config.digest), 'utf8')) as { snapshot: { compat: { qemuVersion: string } } };
    config.snapshot.compat.qemuVersion = '0.0.1-elsewhere';
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDigest = `sha256:${createHash('sha256').update(configBytes).digest('hex')}`;
    const auth = { authorization: `Basic ${Buffer.from('cell:sekrit').toString('base64')}` };
    const started = await fetch(`http://${registry.host}/v2/e2e/snap/blobs/uploads/`, { method: 'POST', headers: auth });
    assert.equal(started.status, 202);
    const location = new URL(started.headers.get('location')!, `http://${registry.host}`);
    location.searchParams.set('digest', configDigest);
    const upload = await fetch(location, { method: 'PUT', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: configBytes });
    assert.equal(upload.status, 201);
    const other = { ...manifest, config: { ...manifest.config, digest: configDigest, size: configBytes.length } };
    const put = await fetch(`http://${registry.host}/v2/e2e/snap/manifests/elsewhere`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/vnd.oci.image.manifest.v1+json' }, body: JSON.stringify(other) });
    assert.equal(put.status, 201);
    const refused = await c.cell(['snapshot', 'pull', `${repo}:elsewhere`]);
    assert.match(refused.stderr, /^error: snapshot .*elsewhere was taken on an incompatible host: qemuVersion 0\.0\.1-elsewhere/);
    assert.equal(refused.stderr.trim().split('\n').length, 1);
    const fetched = readdirSync(join(c.home, 'snapshots', '.blobs', 'blobs', 'sha256'));
    assert.deepEqual(fetched, [configDigest.slice(7)], 'only the config was fetched: no RAM, no disk');

    // A RAM chunk changed at the registry: its digest no longer matches.
    const chunk = manifest.layers.find((l) => l.mediaType === 'application/vnd.cellvm.snapshot.memory.v1+gzip')!;
    const path = registryBlobPath(registry.storage, chunk.digest);
    const bytes = readFileSync(path);
    bytes[100] = bytes[100]! ^ 0xff;
    writeFileSync(path, bytes);
    const tampered = await c.cell(['snapshot', 'pull', `${repo}:base`]);
    assert.equal(tampered.code, 1);
    assert.match(tampered.stderr, /^error: .*(digest|sha256)/i);
    assert.deepEqual(pulledLeftovers(c), [], 'no snapshot and no staging folder left');
    assert.equal(JSON.parse((await c.ok(['snapshots', '--format', 'json'])).stdout).length, 0);
  });
});
