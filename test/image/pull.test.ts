import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, lstatSync, readlinkSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pullImage } from '../../src/image/pull.js';
import { pushImage } from '../../src/image/push.js';
import type { PullProgress } from '../../src/image/progress.js';
import { startRegistry, type RunningRegistry } from './registry-harness.js';
import { storeImage, storeIndex, tarOfTree } from './image-builder.js';
import { dumpDisk, imageRows, makeStore, storeFiles } from './helpers.js';

const FAST_RETRY = { attempts: 3, baseDelayMs: 10, maxDelayMs: 50 };

describe('pull from a real registry (anonymous)', () => {
  let registry: RunningRegistry;
  let src: string;
  before(async () => {
    registry = await startRegistry();
    src = mkdtempSync('/tmp/cellt-src-');
  });
  after(async () => {
    await registry?.stop();
    rmSync(src, { recursive: true, force: true });
  });

  test('multi-layer image with whiteouts and an opaque dir unpacks to the right tree; a second pull downloads nothing', async () => {
    const image = await storeImage(src, {
      layers: [
        { tar: tarOfTree({ 'etc/keep': 'keep\n', 'etc/gone': 'x', 'opq/lower1': 'l1', 'opq/sub/lower2': 'l2', 'bin/tool': 'v1', 'lib/a': 'a' }), compression: 'gzip' },
        { tar: tarOfTree({ 'etc/.wh.gone': '', 'opq/.wh..wh..opq': '', 'opq/upper': 'u', 'bin/tool': 'v2', 'lib/link': { symlink: 'a' } }), compression: 'gzip' },
        { tar: tarOfTree({ 'new/file': 'n' }), compression: 'none' },
      ],
      config: { Entrypoint: ['/bin/tool'], Cmd: ['--help'], Env: ['A=1'], WorkingDir: '/etc', User: '1000' },
    });
    const ref = `${registry.host}/test/layers:v1`;
    await pushImage({ image: image.manifestDigest, reference: ref, storeRoot: src, retry: FAST_RETRY });

    const s = makeStore();
    try {
      const events: PullProgress[] = [];
      const pulled = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, onProgress: (e) => events.push(e), retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(pulled.digest, image.manifestDigest);
      assert.deepEqual(pulled.config, { Entrypoint: ['/bin/tool'], Cmd: ['--help'], Env: ['A=1'], WorkingDir: '/etc', User: '1000' });
      assert.ok(events.some((e) => e.phase === 'blob' && e.status === 'done'));
      const dump = dumpDisk(pulled.diskPath);
      try {
        const root = dump.dir;
        assert.equal(readFileSync(join(root, 'etc/keep'), 'utf8'), 'keep\n');
        assert.equal(existsSync(join(root, 'etc/gone')), false);
        assert.equal(existsSync(join(root, 'etc/.wh.gone')), false);
        assert.deepEqual(readdirSync(join(root, 'opq')).sort(), ['upper']);
        assert.equal(readFileSync(join(root, 'bin/tool'), 'utf8'), 'v2');
        assert.equal(readlinkSync(join(root, 'lib/link')), 'a');
        assert.equal(readFileSync(join(root, 'new/file'), 'utf8'), 'n');
      } finally {
        dump.cleanup();
      }
      const diskStat = lstatSync(pulled.diskPath);

      const again: PullProgress[] = [];
      const second = await pullImage({ reference: ref, storeRoot: s.root, db: s.db, onProgress: (e) => again.push(e), retry: FAST_RETRY, dockerConfigPath: null });
      assert.equal(second.digest, pulled.digest);
      assert.ok(again.filter((e) => e.phase === 'blob').every((e) => e.phase === 'blob' && e.status === 'cached'));
      assert.ok(again.some((e) => e.phase === 'disk' && e.status === 'cached'));
      assert.equal(lstatSync(pulled.diskPath).ino, diskStat.ino);
      assert.equal(storeFiles(s.root).filter((f) => f.startsWith('tmp/')).length, 0);
    } finally {
      s.cleanup();
    }
  });
});
