import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { CELL_BIN, TestHome, waitFor } from '../helpers/cell-home.js';
import { CellClient, type CellEvent, type VmStats } from '../../src/sdk/index.js';

describe('VM lifecycle: run -d, exec, stop, start, rm, refs', () => {
  let h: TestHome;
  before(() => {
    h = new TestHome();
  });
  after(async () => {
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  test('run -d prints the id and leaves the VM running for exec', async () => {
    const r = await h.ok(['run', '-d', '--name', 'web', '--memory', '192', '--cpus', '2', 'busybox']);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    const ps = await h.ok(['ps', '--format', 'json']);
    const [vm] = JSON.parse(ps.stdout) as { id: string; name: string; state: string; spec: { cpus: number; memoryMib: number } }[];
    assert.equal(vm?.id, id);
    assert.equal(vm?.state, 'running');
    assert.equal(vm?.spec.memoryMib, 192);
    const inside = await h.ok(['exec', 'web', '--', 'sh', '-c', 'grep -c ^processor /proc/cpuinfo; echo $(( $(sed -n "s/MemTotal: *\\([0-9]*\\) kB/\\1/p" /proc/meminfo) / 1024 ))']);
    const [cpus, memMib] = inside.stdout.trim().split('\n').map(Number);
    assert.equal(cpus, 2);
    assert.ok(memMib! > 100 && memMib! <= 192, `guest sees ${memMib} MiB`);
  });

  test('exec resolves names, full ids and id prefixes, and reports exit codes', async () => {
    const id = (await h.ok(['ps', '-q'])).stdout.trim();
    assert.equal((await h.cell(['exec', 'web', '--', 'sh', '-c', 'exit 5'])).code, 5);
    assert.equal((await h.ok(['exec', id, '--', 'hostname'])).stdout, 'web\n');
    assert.equal((await h.ok(['exec', id.slice(0, 5), '--', 'echo', 'prefix'])).stdout, 'prefix\n');
    const bad = await h.cell(['exec', 'nope', '--', 'true']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /no such VM: nope/);
    assert.equal(bad.stderr.trim().split('\n').length, 1, 'one line of error');
  });

  test('exec -i streams stdin to the command', async () => {
    const r = await h.ok(['exec', '-i', 'web', '--', 'sh', '-c', 'tr a-z A-Z; echo done'], { input: 'hello\nworld\n' });
    assert.equal(r.stdout, 'HELLO\nWORLD\ndone\n');
  });

  test('exec --timeout, env and working dir', async () => {
    const t = await h.cell(['exec', '--timeout', '1', 'web', '--', 'sleep', '30']);
    assert.equal(t.code, 124);
    const r = await h.ok(['exec', '-e', 'A=1', '-w', '/root', 'web', '--', 'sh', '-c', 'echo $A $(pwd)']);
    assert.equal(r.stdout, '1 /root\n');
  });

  test('two VMs run at once, each with its own disk', async () => {
    await h.ok(['run', '-d', '--name', 'other', 'busybox']);
    await Promise.all([
      h.ok(['exec', 'web', '--', 'sh', '-c', 'echo web > /root/who']),
      h.ok(['exec', 'other', '--', 'sh', '-c', 'echo other > /root/who']),
    ]);
    const [a, b] = await Promise.all([h.ok(['exec', 'web', '--', 'cat', '/root/who']), h.ok(['exec', 'other', '--', 'cat', '/root/who'])]);
    assert.equal(a.stdout, 'web\n');
    assert.equal(b.stdout, 'other\n');
    assert.equal(h.qemuPids().length, 2);
    await h.ok(['rm', '-f', 'other']);
    assert.equal(h.qemuPids().length, 1);
  });

  test('stop sends SIGTERM first: a process that traps it gets to clean up', async () => {
    // The trap writes to the VM's disk, which survives the stop and the next start.
    const script = 'trap "echo got-term > /root/term; exit 0" TERM; while true; do sleep 0.2; done';
    await h.ok(['exec', 'web', '--', 'sh', '-c', `(${script}) > /dev/null 2>&1 &`]);
    await new Promise((r) => setTimeout(r, 500));
    const stopped = await h.ok(['stop', 'web']);
    assert.match(stopped.stdout, /web/);
    const ps = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as { name: string; state: string }[];
    assert.equal(ps.find((v) => v.name === 'web')?.state, 'stopped');
    assert.deepEqual(h.qemuPids(), []);
  });

  test('start boots the stopped VM again with its disk as it was', async () => {
    await h.ok(['start', 'web']);
    const r = await h.ok(['exec', 'web', '--', 'cat', '/root/term', '/root/who']);
    assert.equal(r.stdout, 'got-term\nweb\n');
  });

  test('stop -t gives up on a process that ignores SIGTERM and kills it', async () => {
    await h.ok(['exec', 'web', '--', 'sh', '-c', '(trap "" TERM; while true; do sleep 1; done) > /dev/null 2>&1 &']);
    const r = await h.ok(['stop', '-t', '1', 'web']);
    assert.ok(r.ms >= 1000, `stop waited out the grace period (${r.ms} ms)`);
    assert.deepEqual(h.qemuPids(), []);
  });

  test('rm refuses a running VM without -f and removes it with -f', async () => {
    await h.ok(['start', 'web']);
    const refused = await h.cell(['rm', 'web']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /running/);
    await h.ok(['rm', '-f', 'web']);
    const ps = JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as unknown[];
    assert.deepEqual(ps, []);
    assert.deepEqual(h.qemuPids(), []);
  });

  test('logs shows what the main command of a detached VM printed, with --tail, --timestamps, --since and --until', async () => {
    await h.ok(['run', '-d', '--name', 'talker', 'busybox', '--', 'sh', '-c', 'echo one; echo two >&2; sleep 0.3; echo three']);
    let out = '';
    for (let i = 0; i < 100 && !out.includes('three'); i++) {
      out = (await h.ok(['logs', 'talker'])).stdout;
      await new Promise((r) => setTimeout(r, 100));
    }
    const logs = await h.ok(['logs', 'talker']);
    assert.equal(logs.stdout, 'one\nthree\n');
    assert.equal(logs.stderr, 'two\n');
    const last = await h.ok(['logs', '--tail', '1', 'talker']);
    assert.deepEqual([last.stdout, last.stderr], ['three\n', ''], 'the last line, of whichever stream');
    const stamped = await h.ok(['logs', '-t', '--tail', 'all', 'talker']);
    const stamp = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z) one\n\d{4}-[^ ]+ three\n$/.exec(stamped.stdout);
    assert.ok(stamp, stamped.stdout);
    const written = Date.parse(stamp[1]!);
    assert.ok(Math.abs(Date.now() - written) < 120_000, 'a time of this run');
    assert.equal((await h.ok(['logs', '--since', new Date(written + 60_000).toISOString(), 'talker'])).stdout, '', 'nothing after');
    assert.equal((await h.ok(['logs', '--since', '1h', 'talker'])).stdout, 'one\nthree\n');
    assert.equal((await h.ok(['logs', '--until', new Date(written).toISOString(), 'talker'])).stdout, '', 'nothing before');
    const bad = await h.cell(['logs', '--since', 'yesterday', 'talker']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: --since must be a time/);
    await h.ok(['rm', '-f', 'talker']);
  });

  test('inspect shows the record as JSON', async () => {
    await h.ok(['run', '--name', 'insp', 'busybox', '--', 'true']);
    const r = await h.ok(['inspect', 'insp']);
    const [vm] = JSON.parse(r.stdout) as { name: string; spec: { image: string; cmd: string[] }; exit: { exitCode: number } }[];
    assert.equal(vm?.name, 'insp');
    assert.equal(vm?.spec.image, 'busybox');
    assert.deepEqual(vm?.spec.cmd, ['true']);
    assert.equal(vm?.exit.exitCode, 0);
    await h.ok(['rm', 'insp']);
  });

  test('labels: on run, snapshot and fork (each on top of its source\'s), shown by inspect, filtered by ps and snapshots', async () => {
    await h.ok(['run', '-d', '--name', 'tagged', '--label', 'team=ml', '--label', 'tier', 'busybox']);
    await h.ok(['run', '-d', '--name', 'plain', 'busybox']);
    const labelsOf = async (name: string) => (JSON.parse((await h.ok(['inspect', name])).stdout) as { spec: { labels?: Record<string, string> } }[])[0]!.spec.labels;
    assert.deepEqual(await labelsOf('tagged'), { team: 'ml', tier: '' });
    assert.equal(await labelsOf('plain'), undefined);
    const names = async (args: string[]) => (JSON.parse((await h.ok([...args, '--format', 'json'])).stdout) as { name: string }[]).map((v) => v.name).sort();
    assert.deepEqual(await names(['ps', '--filter', 'label=team=ml']), ['tagged']);
    assert.deepEqual(await names(['ps', '--filter', 'label=tier', '--filter', 'label=team']), ['tagged']);
    assert.deepEqual(await names(['ps', '--filter', 'label=team=web']), []);
    const bad = await h.cell(['ps', '--filter', 'name=tagged']);
    assert.match(bad.stderr, /expected label=KEY or label=KEY=VALUE/);
    assert.match((await h.cell(['run', '-d', '--label', 'bad key=x', 'busybox'])).stderr, /^error: --label "bad key=x": a key is/);

    await h.ok(['snapshot', '--name', 'tagged-snap', '--label', 'stage=warm', 'tagged']);
    await h.ok(['fork', '--name', 'kid', '--label', 'team=web', 'tagged-snap']);
    assert.deepEqual(await labelsOf('kid-1'), { team: 'web', tier: '', stage: 'warm' });
    assert.deepEqual(await names(['snapshots', '--filter', 'label=stage=warm']), ['tagged-snap']);
    assert.deepEqual(await names(['ps', '--filter', 'label=stage']), ['kid-1']);
    await h.ok(['rm', '-f', 'tagged', 'plain', 'kid-1']);
    await h.ok(['snapshot', 'rm', 'tagged-snap']);
  });

  test('health: a failing check goes unhealthy, a passing one healthy (ps, inspect, events); wait --healthy times out clearly; a fork keeps the check; wait prints a detached command\'s exit', async () => {
    const start = new Date();
    await h.ok(['run', '-d', '--name', 'hc', '--health-cmd', 'echo probe; test -f /tmp/ok', '--health-interval', '300ms', '--health-retries', '2', 'busybox']);
    const late = await h.cell(['wait', '--healthy', '--timeout', '1s', 'hc']);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /^error: VM hc is not healthy after 1s \((starting|unhealthy); (last check exited 1: probe|no check has run yet)\)\n$/);
    type Inspected = { health: { status: string; failingStreak: number; log: { exitCode: number; output: string }[] } | null };
    const inspect = async (name: string) => (JSON.parse((await h.ok(['inspect', name])).stdout) as Inspected[])[0]!;
    const deadline = Date.now() + 120_000;
    while ((await inspect('hc')).health?.status !== 'unhealthy') {
      assert.ok(Date.now() < deadline, 'hc became unhealthy');
      await new Promise((r) => setTimeout(r, 300));
    }
    const sick = await inspect('hc');
    assert.ok(sick.health!.failingStreak >= 2);
    assert.deepEqual(sick.health!.log.at(-1), { ...sick.health!.log.at(-1)!, exitCode: 1, output: 'probe\n' }, 'inspect shows the last probe');
    assert.match((await h.ok(['ps'])).stdout, /hc .* running [^\n]*\(unhealthy\)/);

    await h.ok(['exec', 'hc', '--', 'touch', '/tmp/ok']);
    assert.equal((await h.ok(['wait', '--healthy', '--timeout', '120s', 'hc'])).stdout, 'hc\n');
    assert.match((await h.ok(['ps'])).stdout, /hc .* running [^\n]*\(healthy\)/);
    const changes = (await h.ok(['events', '--since', start.toISOString(), '--until', new Date().toISOString(), '--filter', 'vm=hc', '--filter', 'event=health_status', '--format', 'json'])).stdout
      .trim()
      .split('\n')
      .map((line) => (JSON.parse(line) as CellEvent).attributes.health_status);
    assert.deepEqual(changes, ['unhealthy', 'healthy']);

    // A fork has its snapshot's check (and its file): it starts over and passes.
    await h.ok(['snapshot', '--name', 'hc-snap', 'hc']);
    await h.ok(['fork', '--name', 'hc-kid', 'hc-snap']);
    assert.equal((await h.ok(['wait', '--healthy', '--timeout', '120s', 'hc-kid-1'])).stdout, 'hc-kid-1\n');
    await h.ok(['rm', '-f', 'hc', 'hc-kid-1']);
    await h.ok(['snapshot', 'rm', 'hc-snap']);

    // docker wait's habit: the main command's exit code, though a detached VM runs on after it.
    await h.ok(['run', '-d', '--name', 'job', 'busybox', '--', 'sh', '-c', 'sleep 1; exit 3']);
    assert.equal((await h.ok(['wait', 'job'])).stdout, '3\n');
    await h.ok(['rm', '-f', 'job']);
  });

  test('console: the guest\'s serial output, input to a reader of its serial line, one session at a time; Ctrl-] detaches and the VM runs on; the SDK too', async () => {
    await h.ok(['run', '-d', '--name', 'con', 'busybox']);
    const viewer = spawn(CELL_BIN, ['console', 'con'], { env: h.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    viewer.stdout.on('data', (c: Buffer) => (out += c.toString()));
    viewer.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number>((resolve) => viewer.on('close', (code) => resolve(code ?? -1)));
    try {
      assert.ok(await waitFor(() => err.includes("[attached to con's console; Ctrl-] detaches]"), 30_000), `attached: ${err}`);
      const busy = await h.cell(['console', '--no-stdin', 'con']);
      assert.equal(busy.code, 1);
      assert.match(busy.stderr, /^error: VM con's console is in use by another cell console \(one at a time\)/);

      await h.ok(['exec', 'con', '--', 'sh', '-c', 'echo hello-console > /dev/console']);
      assert.ok(await waitFor(() => out.includes('hello-console'), 10_000), `the console shows it: ${JSON.stringify(out)}`);
      // A reader of the serial line (opened before it says so) gets what is typed.
      const reader = h.cell(['exec', 'con', '--', 'sh', '-c', 'exec 3</dev/ttyS0; echo reader-ready > /dev/console; head -n 1 <&3']);
      assert.ok(await waitFor(() => out.includes('reader-ready'), 20_000), 'the reader is ready');
      viewer.stdin.write('typed-line\n');
      const read = await reader;
      assert.equal(read.stdout.trim(), 'typed-line');

      viewer.stdin.write(Buffer.from([0x1d]));
      assert.equal(await exited, 0);
      assert.match(err, /\[detached from con's console\]/);
    } finally {
      viewer.kill('SIGKILL');
    }
    assert.equal((await h.ok(['exec', 'con', '--', 'echo', 'still here'])).stdout, 'still here\n');

    const client = await CellClient.connect({ home: h.home });
    try {
      let seen = '';
      const session = await client.vms.console('con', { onData: (d) => void (seen += d.toString()) });
      await h.ok(['exec', 'con', '--', 'sh', '-c', 'echo from-sdk > /dev/console']);
      assert.ok(await waitFor(() => seen.includes('from-sdk'), 10_000));
      session.close();
      await session.ended;
    } finally {
      client.close();
    }
    await h.ok(['rm', '-f', 'con']);
  });

  test('events: each step of a scripted lifecycle, in order, live through the SDK and afterwards with --since/--until and filters', async () => {
    const start = new Date();
    const client = await CellClient.connect({ home: h.home });
    const stop = new AbortController();
    const seen: CellEvent[] = [];
    // From `start` on: the events before the stream connected are read from the log first.
    const live = (async () => {
      for await (const event of client.events.stream({ since: start, filters: ['vm=ev', 'vm=ev-kid-1'], signal: stop.signal })) {
        seen.push(event);
        if (event.actor.name === 'ev-kid' && event.action === 'destroy') return;
      }
    })().catch((err: unknown) => {
      if (!stop.signal.aborted) throw err;
    });
    try {
      await h.ok(['run', '-d', '--name', 'ev', '--label', 'team=ml', 'busybox']);
      await h.ok(['pause', 'ev']);
      await h.ok(['unpause', 'ev']);
      await h.ok(['snapshot', '--name', 'ev-snap', 'ev']);
      await h.ok(['fork', '--name', 'ev-kid', 'ev-snap']);
      await h.ok(['stop', '-t', '1', 'ev']);
      await h.ok(['rm', 'ev']);
      await h.ok(['rm', '-f', 'ev-kid-1']);
      await h.ok(['snapshot', 'rm', 'ev-snap']);
    } finally {
      const timer = setTimeout(() => stop.abort(), 10_000);
      await live;
      clearTimeout(timer);
      client.close();
    }
    const steps = (events: CellEvent[]) => events.map((e) => `${e.type} ${e.action} ${e.actor.name}`);
    const expected = [
      'vm create ev',
      'vm start ev',
      'vm pause ev',
      'vm unpause ev',
      'snapshot create ev-snap',
      'vm snapshot ev', // its RAM is saved; it goes on in a new QEMU
      'vm start ev',
      'vm create ev-kid-1',
      'snapshot fork ev-snap',
      'vm start ev-kid-1',
      'vm stop ev',
      'vm die ev',
      'vm destroy ev',
      'vm stop ev-kid-1',
      'vm die ev-kid-1',
      'vm destroy ev-kid-1',
    ];
    assert.deepEqual(steps(seen), expected);
    const die = seen.find((e) => e.action === 'die' && e.actor.name === 'ev')!;
    assert.equal(die.attributes.reason, 'stopped');
    assert.deepEqual(die.actor.labels, { team: 'ml' });
    assert.ok(seen.every((e, i) => i === 0 || e.seq > seen[i - 1]!.seq), 'in order');

    // Afterwards: a finite report of the same window, with Docker's filters.
    const report = async (...args: string[]) =>
      (await h.ok(['events', '--since', start.toISOString(), '--until', new Date().toISOString(), '--format', 'json', ...args])).stdout
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as CellEvent);
    assert.deepEqual(steps(await report('--filter', 'event=fork')), ['snapshot fork ev-snap']);
    assert.deepEqual(steps(await report('--filter', 'label=team=ml', '--filter', 'event=die')), ['vm die ev', 'vm die ev-kid-1'], "a fork has its snapshot's labels");
    assert.deepEqual(steps(await report('--filter', 'snapshot=ev-snap')), [
      'snapshot create ev-snap',
      'vm snapshot ev',
      'vm create ev-kid-1',
      'snapshot fork ev-snap',
      'snapshot delete ev-snap',
    ]);
    const text = await h.ok(['events', '--since', start.toISOString(), '--until', new Date().toISOString(), '--filter', 'event=pause']);
    assert.match(text.stdout, /^\d{4}-\d\d-\d\dT[\d:.]+Z vm pause [0-9a-f]{64} \(name=ev\)\n$/);
    const bad = await h.cell(['events', '--filter', 'colour=red']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: --filter "colour=red": use KEY=VALUE with KEY one of vm, snapshot, type, event, label/);
  });

  test('stats: a busy loop in the guest shows as more CPU than idle, memory and disk are counted, the stream ends with Ctrl-C (exit 0), a stopped VM is a row of zeros', async (t) => {
    const sample = async (...refs: string[]) =>
      (await h.ok(['stats', '--no-stream', '--format', 'json', ...refs])).stdout
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as VmStats);
    try {
      await h.ok(['run', '-d', '--name', 'stats-box', 'busybox']);
      const [idle] = await sample('stats-box');
      await h.ok(['exec', 'stats-box', '--', 'sh', '-c', 'while :; do :; done >/dev/null 2>&1 &']);
      const [busy] = await sample('stats-box');
      t.diagnostic(`stats: idle ${idle!.cpuPercent}% CPU, busy ${busy!.cpuPercent}% CPU; RSS ${busy!.memory?.rssBytes}, PSS ${busy!.memory?.pssBytes}; disk ${JSON.stringify(busy!.disk)}`);
      assert.ok(busy!.cpuPercent > idle!.cpuPercent, `busy ${busy!.cpuPercent}% > idle ${idle!.cpuPercent}%`);
      assert.equal(busy!.state, 'running');
      assert.ok(busy!.memory && busy!.memory.rssBytes > 0 && busy!.memory.pssBytes > 0, 'QEMU has resident memory');
      assert.equal(busy!.memory.guestBytes, 256 * 1024 * 1024);
      assert.ok(busy!.disk && busy!.disk.readBytes > 0, 'the guest read its disk');
      assert.equal(busy!.network, null, 'no NIC (CELL_NETWORK=off): nothing to count');

      // Streamed: a line per second until Ctrl-C, which is a normal end.
      const child = spawn(CELL_BIN, ['stats', '--format', 'json', 'stats-box'], { env: h.env, stdio: ['ignore', 'pipe', 'pipe'] });
      const lines: VmStats[] = [];
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      for await (const line of createInterface({ input: child.stdout })) {
        lines.push(JSON.parse(line) as VmStats);
        if (lines.length === 2) child.kill('SIGINT');
      }
      assert.equal(await exited, 0, stderr);
      assert.ok(lines.length >= 2 && lines.every((l) => l.name === 'stats-box' && l.cpuPercent > 0));

      await h.ok(['stop', '-t', '0', 'stats-box']);
      const [stopped] = await sample('stats-box');
      assert.deepEqual({ ...stopped!, time: '' }, { id: busy!.id, name: 'stats-box', state: 'stopped', time: '', cpuPercent: 0, cpus: 1, memory: null, disk: null, network: null });
    } finally {
      await h.cell(['rm', '-f', 'stats-box']);
    }
  });
});
