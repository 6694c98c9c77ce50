import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/server/app.js';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import type { Engine } from '../../src/engine/engine.js';
import type { StatsStreamOptions, VmStatsRow } from '../../src/engine/vm-stats.js';
import { CellClient, isAbortError, isNotFound, Sandbox, type VmStats } from '../../src/sdk/index.js';
import { screen, statsLine, statsTable } from '../../src/cli/commands/stats.js';

// GET /v1/vms/:ref/stats through the real fastify app and the SDK, with a test double for the
// engine's sampler: one sample, a stream, and celld stopping its sampler when the client leaves.

const vm = { id: 'c'.repeat(64), name: 'web', state: 'running' };
const MIB = 1024 * 1024;

function row(n: number): VmStatsRow {
  return {
    id: vm.id,
    name: vm.name,
    state: 'running',
    time: new Date(1_800_000_000_000 + n * 1000).toISOString(),
    cpuPercent: n * 10,
    cpus: 1,
    memory: { rssBytes: 226 * MIB, pssBytes: 224 * MIB, guestBytes: 256 * MIB },
    disk: { readBytes: 1_700_000, writeBytes: 86_016 },
    network: null,
  };
}

describe('stats over the app with an engine double', () => {
  let dir: string;
  let app: FastifyInstance;
  let client: CellClient;
  /** Each sampler the server started: how it ended (false while it runs). */
  const samplers: { ended: boolean; aborted: () => boolean }[] = [];
  let samplerEnded: () => void = () => {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cell-stats-'));
    const resolve = (ref: string) => {
      if (ref === 'web' || ref === vm.id) return vm;
      throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${ref}`);
    };
    const members: Record<string, unknown> = {
      vms: { resolve, inspect: async (ref: string) => resolve(ref) },
      stats: {
        // Two VMs per batch, a batch every 5 ms, until the client leaves.
        async *everyRunning(opts: StatsStreamOptions): AsyncGenerator<VmStatsRow[]> {
          for (let n = 1; !opts.signal?.aborted; n++) {
            yield [row(n), { ...row(n), id: 'd'.repeat(64), name: 'db' }];
            await sleep(5, undefined, { signal: opts.signal }).catch(() => {});
          }
        },
        async *stream(ref: string, opts: StatsStreamOptions): AsyncGenerator<VmStatsRow> {
          resolve(ref);
          const sampler = { ended: false, aborted: () => opts.signal?.aborted === true };
          samplers.push(sampler);
          try {
            for (let n = 1; ; n++) {
              await sleep(5, undefined, { signal: opts.signal });
              yield row(n);
            }
          } catch {
            // aborted: the client went away
          } finally {
            sampler.ended = true;
            samplerEnded();
          }
        },
      },
    };
    const engine = new Proxy(members, {
      get(target, name) {
        if (typeof name === 'string' && name in target) return target[name];
        throw new Error(`the test touched engine.${String(name)}`);
      },
    }) as unknown as Engine;
    app = buildApp(engine);
    await app.listen({ path: join(dir, 'celld.sock') });
    client = await CellClient.connect({ socketPath: join(dir, 'celld.sock'), autoStart: false });
  });

  after(async () => {
    client.close();
    await app.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('without ?stream: one stats line, then the answer ends and the sampler with it', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/vms/web/stats' });
    assert.equal(res.statusCode, 200);
    assert.match(res.headers['content-type'] as string, /application\/x-ndjson/);
    const lines = res.body.trim().split('\n').map((l) => JSON.parse(l) as { type: string; stats: VmStats });
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.type, 'stats');
    assert.deepEqual(lines[0]!.stats, row(1));
    assert.equal(samplers.at(-1)!.ended, true);
  });

  test('vms.stats and sandbox.getMetrics: one sample; an unknown VM is not_found before any stream', async () => {
    assert.deepEqual(await client.vms.stats('web'), row(1));
    const box = await Sandbox.connect('web', { client });
    assert.equal((await box.getMetrics()).cpuPercent, 10);
    await assert.rejects(client.vms.stats('nope'), (err: unknown) => isNotFound(err) && /no such VM: nope/.test(err.message));
    const bad = await app.inject({ method: 'GET', url: '/v1/vms/web/stats?stream=maybe' });
    assert.equal(bad.statusCode, 400);
  });

  test('vms.statsAll: one batch of every running VM in one request; statsAllStream: a row per VM each second until left', async () => {
    assert.deepEqual((await client.vms.statsAll()).map((r) => [r.name, r.cpuPercent]), [['web', 10], ['db', 10]]);
    const seen: string[] = [];
    for await (const s of client.vms.statsAllStream()) {
      seen.push(`${s.name}:${s.cpuPercent}`);
      if (seen.length === 4) break;
    }
    assert.deepEqual(seen, ['web:10', 'db:10', 'web:20', 'db:20']);
  });

  test('vms.statsStream: a sample at a time; leaving the loop closes the request, and celld stops sampling', async () => {
    const seen: number[] = [];
    const ended = new Promise<void>((resolve) => (samplerEnded = resolve));
    for await (const s of client.vms.statsStream('web')) {
      seen.push(s.cpuPercent);
      if (seen.length === 3) break;
    }
    assert.deepEqual(seen, [10, 20, 30]);
    await ended;
    const sampler = samplers.at(-1)!;
    assert.equal(sampler.ended, true);
    assert.equal(sampler.aborted(), true, 'the stream signal aborted when the client went away');
  });

  test('vms.statsStream: an abort signal ends the iteration with an AbortError and the sampler too', async () => {
    const controller = new AbortController();
    const ended = new Promise<void>((resolve) => (samplerEnded = resolve));
    let count = 0;
    await assert.rejects(
      (async () => {
        for await (const _ of client.vms.statsStream('web', { signal: controller.signal })) if (++count === 2) controller.abort();
      })(),
      (err: unknown) => isAbortError(err),
    );
    await ended;
    assert.equal(samplers.at(-1)!.ended, true);
  });
});

test('cell stats tables: docker stats columns, -- for what a VM does not have, fixed widths when streamed', () => {
  const stopped: VmStats = { ...row(0), id: 'd'.repeat(64), name: 'old', state: 'stopped', cpuPercent: 0, memory: null, disk: null, network: null };
  const running: VmStats = { ...row(0), cpuPercent: 100.456, network: { rxBytes: 1536, txBytes: 300 } };
  assert.equal(
    statsTable([running, stopped]),
    [
      'ID             NAME   CPU %     MEM RSS / GUEST     MEM PSS   NET RX / TX       BLOCK READ / WRITE',
      'cccccccccccc   web    100.46%   226 MiB / 256 MiB   224 MiB   1.5 KiB / 300 B   1.6 MiB / 84 KiB',
      'dddddddddddd   old    0.00%     --                  --        --                --',
      '',
    ].join('\n'),
  );
  const header = statsLine(null);
  const line = statsLine(running);
  assert.equal(header.indexOf('CPU %'), line.indexOf('100.46%'), 'streamed lines line up under the header');
  assert.equal(header.indexOf('BLOCK'), line.indexOf('1.6 MiB'));
  // Redrawn in place: from the top-left corner, each line cleared to its end, the rest of the screen cleared.
  const drawn = screen([running]);
  assert.ok(drawn.startsWith('\x1b[H'));
  assert.ok(drawn.endsWith('\n\x1b[J'));
  assert.equal(drawn.split('\x1b[K').length, 3);
});
