import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CellClient, Sandbox } from '../../src/sdk/index.js';
import { CELL_BIN, TestHome } from '../helpers/cell-home.js';

// Interactive terminals end to end, on one real VM: `cell exec -it` driven through tmux (keys
// sent, the screen read back) and the SDK's sandbox.pty.
describe('pty', () => {
  let h: TestHome;
  let client: CellClient;
  // A tmux server of our own (its own socket), killed at the end whatever happens.
  const tmuxSocket = `cellpty-${process.pid}`;
  const tmux = (...args: string[]) => execFileSync('tmux', ['-L', tmuxSocket, ...args], { encoding: 'utf8' });
  const screen = () => tmux('capture-pane', '-p', '-t', 'pty');

  before(async () => {
    h = new TestHome();
    await h.ok(['run', '-d', '--name', 'pty', 'busybox']);
    client = await CellClient.connect({ home: h.home, autoStart: false });
  });
  after(async () => {
    try {
      tmux('kill-server');
    } catch {
      /* no server: it ended with its last session */
    }
    rmSync(join(`/tmp/tmux-${process.getuid?.() ?? 0}`, tmuxSocket), { force: true }); // a socket file tmux may leave
    client?.close();
    await h.cleanup();
    assert.deepEqual(h.qemuPids(), []);
  });

  /** Polls the tmux screen until `pred` holds. */
  async function until(pred: (text: string) => boolean, what: string, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = screen();
      if (pred(text)) return text;
      if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; screen:\n${text}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const count = (text: string, needle: string) => text.split(needle).length - 1;

  test('cell exec -it under tmux: a prompt, stty size follows a resize, Ctrl-C interrupts sleep, the exit code comes back', async () => {
    const exitFile = join(h.home, 'exit-code');
    const env = Object.entries({ CELL_HOME: h.home, CELL_CACHE: h.env.CELL_CACHE!, CELL_NETWORK: 'off' })
      .map(([k, v]) => `${k}='${v}'`)
      .join(' ');
    tmux('new-session', '-d', '-s', 'pty', '-x', '80', '-y', '24', `${env} ${CELL_BIN} exec -it -e PS1=ptyprompt: pty -- sh; echo EXIT=$? > ${exitFile}; sleep 5`);

    await until((t) => t.includes('ptyprompt:'), 'the prompt');
    tmux('send-keys', '-t', 'pty', 'stty size', 'Enter');
    await until((t) => /^24 80\s*$/m.test(t), 'stty size 24 80');

    tmux('resize-window', '-t', 'pty', '-x', '100', '-y', '30');
    // The new size travels tmux -> cell (SIGWINCH) -> celld -> the guest: ask until it is there.
    const deadline = Date.now() + 10_000;
    while (!/^30 100\s*$/m.test(screen())) {
      if (Date.now() > deadline) assert.fail(`stty size never showed 30 100; screen:\n${screen()}`);
      tmux('send-keys', '-t', 'pty', 'stty size', 'Enter');
      await new Promise((r) => setTimeout(r, 700));
    }

    tmux('send-keys', '-t', 'pty', 'clear', 'Enter');
    await until((t) => count(t, 'ptyprompt:') === 1 && !t.includes('30 100'), 'a clear screen');
    tmux('send-keys', '-t', 'pty', 'sleep 30', 'Enter');
    await new Promise((r) => setTimeout(r, 1000));
    const before = Date.now();
    tmux('send-keys', '-t', 'pty', 'C-c');
    await until((t) => count(t, 'ptyprompt:') === 2, 'a new prompt after Ctrl-C', 5000);
    assert.ok(Date.now() - before < 5000, `sleep 30 ended ${Date.now() - before} ms after Ctrl-C`);
    tmux('send-keys', '-t', 'pty', 'echo rc=$?', 'Enter');
    await until((t) => t.includes('rc=130'), 'the status of the interrupted sleep (SIGINT)');

    tmux('send-keys', '-t', 'pty', 'exit 3', 'Enter');
    const exitDeadline = Date.now() + 10_000;
    while (!existsSync(exitFile) || !readFileSync(exitFile, 'utf8').trim()) {
      if (Date.now() > exitDeadline) assert.fail(`cell exec did not end; screen:\n${screen()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(readFileSync(exitFile, 'utf8').trim(), 'EXIT=3');
  });

  test('sandbox.pty: onData sees what runs, resize, kill', async () => {
    const sb = await Sandbox.connect('pty', { client });
    let out = '';
    const pty = await sb.pty.create({ cols: 80, rows: 24, onData: (d) => void (out += Buffer.from(d).toString()) });
    const waitFor = async (re: RegExp, what: string) => {
      const deadline = Date.now() + 10_000;
      while (!re.test(out)) {
        if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}; output: ${JSON.stringify(out)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await pty.write('stty size; echo "sum=$((6*7)) term=$TERM"\n');
    await waitFor(/24 80\r\n/, 'stty size 24 80');
    await waitFor(/sum=42 term=xterm-256color\r\n/, 'the echo');
    await pty.resize({ cols: 120, rows: 40 });
    await pty.write('stty size\n');
    await waitFor(/40 120\r\n/, 'the new size');
    assert.equal(await pty.kill(), true);
    const result = await pty.wait();
    assert.deepEqual([result.exitCode, result.signal], [137, 9]);
  });

  test('cell run -it under tmux: a shell in a new VM on this terminal, its exit code back, the VM gone with --rm', async () => {
    const exitFile = join(h.home, 'run-exit-code');
    const env = Object.entries({ CELL_HOME: h.home, CELL_CACHE: h.env.CELL_CACHE!, CELL_NETWORK: 'off' })
      .map(([k, v]) => `${k}='${v}'`)
      .join(' ');
    tmux('new-session', '-d', '-s', 'run', '-x', '90', '-y', '20', `${env} ${CELL_BIN} run -it --rm --name runit -e PS1=runprompt: busybox -- sh; echo EXIT=$? > ${exitFile}; sleep 5`);
    const runScreen = () => tmux('capture-pane', '-p', '-t', 'run');
    const deadline = Date.now() + 60_000;
    while (!runScreen().includes('runprompt:')) {
      if (Date.now() > deadline) assert.fail(`no prompt; screen:\n${runScreen()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    tmux('send-keys', '-t', 'run', 'stty size; exit 4', 'Enter');
    while (!existsSync(exitFile) || !readFileSync(exitFile, 'utf8').trim()) {
      if (Date.now() > deadline) assert.fail(`cell run did not end; screen:\n${runScreen()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(runScreen(), /^20 90\s*$/m, 'the guest terminal has this one\'s size');
    assert.equal(readFileSync(exitFile, 'utf8').trim(), 'EXIT=4');
    assert.ok(!(await h.ok(['ps', '-a'])).stdout.includes('runit'), 'removed with --rm');
  });

  test('cell attach: a detached -i main command takes input, Ctrl-P Ctrl-Q detaches and leaves it running, a second attach goes on, the end of stdin ends it with its code', async () => {
    await h.ok(['run', '-d', '-i', '--name', 'att', 'busybox', '--', 'sh', '-c', 'while read l; do echo got:$l; done; exit 7']);
    const attach = () => {
      const child = spawn(CELL_BIN, ['attach', 'att'], { env: h.env, stdio: ['pipe', 'pipe', 'pipe'] });
      const io = { out: '', err: '', code: new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1))) };
      child.stdout.on('data', (c: Buffer) => (io.out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (io.err += c.toString()));
      return { child, io };
    };
    const seen = async (io: { out: string }, text: string) => {
      const deadline = Date.now() + 20_000;
      while (!io.out.includes(text)) {
        if (Date.now() > deadline) assert.fail(`never saw ${text}: ${JSON.stringify(io.out)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const first = attach();
    try {
      // Attached only once celld has the session: keep saying it until the answer comes.
      first.child.stdin.write('one\n');
      await seen(first.io, 'got:one');
      first.child.stdin.write(Buffer.from([0x10, 0x11]));
      assert.equal(await first.io.code, 0);
      assert.match(first.io.err, /\[detached from att\]/);
    } finally {
      first.child.kill('SIGKILL');
    }
    const second = attach();
    try {
      second.child.stdin.write('two\n');
      await seen(second.io, 'got:two');
      second.child.stdin.end();
      assert.equal(await second.io.code, 7, "the end of cell's stdin closed the command's; its exit code came back");
    } finally {
      second.child.kill('SIGKILL');
    }
    assert.match((await h.ok(['logs', 'att'])).stdout, /got:one\ngot:two\n/);
    const late = await h.cell(['attach', 'att']);
    assert.equal(late.code, 1);
    assert.match(late.stderr, /^error: VM att has no main command running to attach to/);
    await h.ok(['rm', '-f', 'att']);
  });
});
