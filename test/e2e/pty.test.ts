import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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
});
