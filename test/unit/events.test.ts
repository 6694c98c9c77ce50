import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CellError } from '../../src/domain/errors.js';
import { matchesEvent, parseEventFilters } from '../../src/domain/events.js';
import { newVmRecord } from '../../src/domain/vm.js';
import { openDatabase, type Db } from '../../src/store/database.js';
import { EventStore } from '../../src/store/event-store.js';
import { VmStore } from '../../src/store/vm-store.js';
import { EventFeed } from '../../src/engine/event-feed.js';

const spec = { image: 'busybox', imageDigest: 'sha256:x', cpus: 1, memoryMib: 256, cmd: [], env: [], workingDir: '/', user: 'root', timeoutSec: 0, autoRemove: false, labels: { team: 'ml' } };

function withDb(fn: (db: Db) => Promise<void> | void): Promise<void> {
  const dir = mkdtempSync('/tmp/cell-events-');
  const db = openDatabase(join(dir, 'cell.db'));
  return Promise.resolve(fn(db)).finally(() => {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
}

test("a VM's state changes are events in the same transaction: a refused change or a rolled-back one leaves none", () =>
  withDb((db) => {
    const events = new EventStore(db);
    const vms = new VmStore(db, events);
    const id = 'a'.repeat(64);
    vms.insert(newVmRecord(id, 'box', spec, null));
    vms.setState(id, 'starting');
    vms.setState(id, 'running', { accelerator: 'tcg' });
    assert.throws(() => vms.setState(id, 'created'), (err: unknown) => err instanceof CellError && err.code === 'invalid_state');
    assert.throws(() =>
      db.transaction(() => {
        vms.setState(id, 'paused');
        throw new Error('the QMP stop failed');
      })(),
    );
    vms.setState(id, 'stopping');
    vms.setState(id, 'stopped', { exit: { reason: 'exited', exitCode: 3, signal: null, at: new Date().toISOString() } });
    vms.delete(id);
    const all = events.after(0);
    assert.deepEqual(all.map((e) => e.action), ['create', 'start', 'stop', 'die', 'destroy']);
    assert.deepEqual(all[1]!.attributes, { accelerator: 'tcg' });
    assert.deepEqual(all[3]!.attributes, { reason: 'exited', exitCode: '3' });
    assert.deepEqual(all[4]!.actor, { id, name: 'box', labels: { team: 'ml' } }, 'a removed VM is still named');
  }));

test('the log keeps the newest events; a follower reads what is kept from --since, then live ones, and stops at --until', () =>
  withDb(async (db) => {
    const events = new EventStore(db, 150);
    const actor = { id: 'b'.repeat(64), name: 'box' };
    for (let i = 0; i < 400; i++) events.record({ type: 'vm', action: `a${i}`, actor, attributes: {} });
    const kept = events.after(0, 1000);
    assert.ok(kept.length >= 150 && kept.length <= 250, `about the newest 150 kept: ${kept.length}`);
    assert.equal(kept.at(-1)!.action, 'a399');

    const feed = new EventFeed(events);
    const stop = new AbortController();
    const got: string[] = [];
    const reading = (async () => {
      for await (const e of feed.read({ since: new Date(Date.now() - 60_000), filter: parseEventFilters(['event=a399', 'event=live']) }, stop.signal)) {
        got.push(e.action);
        if (e.action === 'live') stop.abort();
      }
    })();
    await new Promise((r) => setTimeout(r, 50));
    events.record({ type: 'vm', action: 'live', actor, attributes: {} });
    await reading;
    assert.deepEqual(got, ['a399', 'live']);

    const until = new Date(Date.now() + 200);
    const ended: string[] = [];
    for await (const e of feed.read({ filter: parseEventFilters([]), until })) ended.push(e.action);
    assert.deepEqual(ended.slice(-1), ['live'], 'with only --until: what is kept up to then, and the stream ends by itself');
  }));

test('event filters: Docker keys, values of one key as alternatives, names and id prefixes, labels; bad ones refused', () => {
  const event = { seq: 1, time: '2026-12-03T10:00:00.000Z', type: 'vm' as const, action: 'die', actor: { id: 'abcdef0123', name: 'web', labels: { team: 'ml' } }, attributes: { snapshot: 'fedcba9876', snapshotName: 'base' } };
  const match = (...items: string[]) => matchesEvent(event, parseEventFilters(items));
  assert.ok(match());
  assert.ok(match('vm=web', 'event=start', 'event=die'));
  assert.ok(match('vm=abcd', 'type=vm', 'label=team=ml'));
  assert.ok(match('snapshot=base') && match('snapshot=fedc'));
  assert.ok(!match('vm=ab'), 'a prefix shorter than 4 is no id');
  assert.ok(!match('vm=web', 'event=start'));
  assert.ok(!match('label=team=web'));
  assert.ok(!match('type=snapshot'));
  for (const bad of ['colour=red', 'vm', 'vm=', 'type=image']) assert.throws(() => parseEventFilters([bad]), (err: unknown) => err instanceof CellError && err.code === 'invalid_argument', bad);
});
