/**
 * "Connections that were open in the snapshot are reset, not half-alive" (issue 11), as a guest
 * sees it: nc to the fake internet's site A, idle across a snapshot, sends its request 12 s after
 * it connected and then waits up to a minute for the answer (its input stays open, so a
 * connection left half-alive would keep it running).
 */
import assert from 'node:assert/strict';
import { ADDR, type FakeInternet } from './fake-internet.js';
import { waitFor, type TestHome } from './cell-home.js';

export interface HeldConnection {
  /** Once every VM's request went out: answered in `kept`; in `reset`, nc ended with no answer. */
  assertAfterwards(kept: readonly string[], reset: readonly string[]): Promise<void>;
}

/** Opens the connection in VM `name` and returns once the site has it. */
export async function holdConnection(h: TestHome, net: FakeInternet, name: string): Promise<HeldConnection> {
  const since = Date.now();
  const connects = () => net.readLog().filter((e) => e.kind === 'connect' && (e as { t: number }).t >= since).length;
  const request = `(sleep 12; printf 'GET /held HTTP/1.0\\r\\nHost: site-a.test\\r\\n\\r\\n'; sleep 60) | (nc ${ADDR.siteA} 80 > /tmp/held.out 2>&1; echo $? > /tmp/held.rc)`;
  await h.ok(['exec', name, '--', 'sh', '-c', `(${request}) </dev/null >/dev/null 2>&1 &`]);
  assert.ok(await waitFor(() => connects() > 0, 20_000), `${name}: the held connection reached the site`);
  const read = async (vm: string, file: string) => (await h.cell(['exec', vm, '--', 'sh', '-c', `cat ${file} 2>/dev/null`], { timeoutMs: 60_000 })).stdout;
  return {
    async assertAfterwards(kept, reset) {
      for (const vm of [...kept, ...reset]) {
        const ended = await waitFor(async () => (await read(vm, '/tmp/held.rc')).trim() !== '', 45_000, 1000);
        const state = ended ? '' : (await h.cell(['exec', vm, '--', 'sh', '-c', 'ps -o pid,stat,args | grep -v "\\["; cat /proc/net/tcp; cat /sys/fs/cgroup/*/cgroup.freeze 2>/dev/null'])).stdout;
        assert.ok(ended, `${vm}: nc ended (a half-alive connection would keep it waiting)\n${state}`);
      }
      for (const vm of kept) assert.match(await read(vm, '/tmp/held.out'), /^HTTP\/1\.[01] 200/, `${vm} kept its connection`);
      for (const vm of reset) assert.doesNotMatch(await read(vm, '/tmp/held.out'), /HTTP\//, `${vm}'s copy of the connection got no answer`);
      const answered = net.readLog().filter((e) => e.kind === 'http' && (e as { path?: string }).path === '/held' && (e as { t: number }).t >= since);
      assert.equal(answered.length, kept.length, 'the site saw a request from the VMs that kept the connection only');
    },
  };
}
