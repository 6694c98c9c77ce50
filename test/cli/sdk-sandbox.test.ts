import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../../src/server/app.js';
import { CellError, ErrorCodes } from '../../src/domain/errors.js';
import type { Engine } from '../../src/engine/engine.js';
import type { ExecOptions, ExecResult, OutputSink } from '../../src/engine/output.js';
import {
  CellClient,
  hasErrorCode,
  isAbortError,
  isConflict,
  isInvalidArgument,
  isNotFound,
  isVmNotRunning,
  Sandbox,
  type OutputChunk,
} from '../../src/sdk/index.js';

// The SDK against the real fastify app, registered from the route table, on a unix socket, with a
// test double for the engine behind it: the whole wire path of Sandbox.commands and Sandbox.files,
// no VMs.

const vm = { id: 'b'.repeat(64), name: 'box', state: 'running' };
const exited = (exitCode = 0): ExecResult => ({ exitCode, signal: null, timedOut: false, durationMs: 1 });

describe('SDK sandbox over the app with an engine double', () => {
  let dir: string;
  let app: FastifyInstance;
  let client: CellClient;
  let box: Sandbox;
  const execs: ExecOptions[] = [];
  const stops: number[] = [];
  let killed = false;
  let releaseInfo: () => void = () => {};

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cell-sdk-app-'));
    const vms: Record<string, unknown> = {
      resolve: (ref: string) => {
        if (ref === 'box' || ref === vm.id) return vm;
        throw new CellError(ErrorCodes.NOT_FOUND, `no such VM: ${ref}`);
      },
      inspect: async (ref: string) => (vms.resolve as (r: string) => unknown)(ref),
      pause: async () => ({ ...vm, state: 'paused' }),
      unpause: async () => ({ ...vm, state: 'running' }),
      stop: async (_ref: string, timeoutSec: number) => (stops.push(timeoutSec), { ...vm, state: 'stopped' }),
      statGuestPath: async (_ref: string, path: string) => {
        if (path === '/nope' || path === '/work/gone') throw new CellError(ErrorCodes.NOT_FOUND, `${path}: no such file or directory`);
        const kind = path === '/work/d' ? 'directory' : 'file';
        return { kind, mode: 0o644, uid: 0, gid: 0, size: 3, mtimeMs: 0, linkTarget: '' };
      },
      exec: async (_ref: string, opts: ExecOptions, sink: OutputSink): Promise<ExecResult> => {
        execs.push(opts);
        switch (opts.cmd[0]) {
          case 'find':
            sink.stdout(Buffer.from('/work/d/a b\0/work/d/$(x); y\0'));
            return exited();
          case 'mkdir':
            if (opts.cmd.at(-1) === '/work/file') {
              sink.stderr(Buffer.from("mkdir: can't create directory '/work/file': File exists\n"));
              return exited(1);
            }
            return exited();
          case 'rm':
            return exited();
          case 'flood':
            for (let i = 0; i < 24; i++) sink.stdout(Buffer.alloc(1024 * 1024, i));
            return exited();
          case 'upper': {
            let text = '';
            for await (const chunk of opts.stdin ?? []) text += chunk.toString();
            sink.stdout(Buffer.from(text.toUpperCase()));
            sink.stderr(Buffer.from('done\n'));
            return exited();
          }
          case 'pty': {
            // A terminal double: says its size and each resize, echoes what is typed, exits 5 on "exit".
            const term = opts.terminal!;
            sink.stdout(Buffer.from(`size ${term.size.cols}x${term.size.rows}\r\n`));
            term.attach({ resize: async (s) => void sink.stdout(Buffer.from(`resized ${s.cols}x${s.rows}\r\n`)) });
            for await (const chunk of opts.stdin ?? []) {
              sink.stdout(chunk);
              if (chunk.toString().includes('exit')) return exited(5);
            }
            return exited();
          }
          case 'sleep':
            await new Promise((resolve) => opts.signal?.addEventListener('abort', resolve));
            killed = true;
            return { exitCode: 137, signal: 9, timedOut: false, durationMs: 5 };
          default:
            sink.stdout(Buffer.from(`ran ${opts.cmd.join(' ')}\n`));
            return exited(3);
        }
      },
    };
    const members: Record<string, unknown> = {
      vms,
      info: () => new Promise((resolve) => (releaseInfo = () => resolve({}))),
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
    box = await Sandbox.connect('box', { client });
  });

  after(async () => {
    releaseInfo();
    client.close();
    await app.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('commands.run: a string through sh -c, output collected and streamed, the time limit in ms becomes the wire seconds', async () => {
    const streamed: string[] = [];
    const r = await box.commands.run('echo hi', { commandTimeoutMs: 1500, onStdout: (c) => void streamed.push(c.toString()) });
    assert.deepEqual(execs.at(-1)?.cmd, ['sh', '-c', 'echo hi']);
    assert.equal(execs.at(-1)?.timeoutSec, 1.5);
    assert.deepEqual([r.exitCode, r.stdout, r.stderr], [3, 'ran sh -c echo hi\n', ''], 'a non-zero exit is a result');
    assert.deepEqual(streamed, ['ran sh -c echo hi\n']);
  });

  test('commands.start: stdin, output by async iteration, wait', async () => {
    const handle = await box.commands.start(['upper'], { stdin: true });
    handle.stdin!.write('hello ');
    handle.stdin!.end('world');
    const chunks: OutputChunk[] = [];
    for await (const chunk of handle) chunks.push(chunk);
    assert.deepEqual(
      chunks.map((c) => [c.stream, c.data.toString()]),
      [
        ['stdout', 'HELLO WORLD'],
        ['stderr', 'done\n'],
      ],
    );
    assert.equal((await handle.wait()).exitCode, 0);
  });

  test('commands.start: a loop that starts after wait() still gets the whole output; callbacks see it as it comes', async () => {
    const seen: string[] = [];
    const handle = await box.commands.start(['upper'], { stdin: (async function* () { yield 'late'; })(), onStdout: (c) => void seen.push(c.toString()) });
    assert.equal((await handle.wait()).exitCode, 0);
    const chunks: string[] = [];
    for await (const { data } of handle) chunks.push(data.toString());
    assert.deepEqual(chunks, ['LATE', 'done\n']);
    assert.deepEqual(seen, ['LATE']);
  });

  test('commands.start: kill ends the command in celld; wait rejects with an AbortError', async () => {
    const handle = await box.commands.start(['sleep', '600']);
    while (execs.at(-1)?.cmd.join(' ') !== 'sleep 600') await new Promise((r) => setTimeout(r, 5));
    await handle.kill();
    await assert.rejects(handle.wait(), (err: unknown) => isAbortError(err));
    while (!killed) await new Promise((r) => setTimeout(r, 5));
  });

  test('files.list, mkdir and remove run find, mkdir and rm with the path as one argument', async () => {
    const entries = await box.files.list('/work/d');
    assert.deepEqual(execs.at(-1)?.cmd, ['find', '/work/d', '-mindepth', '1', '-maxdepth', '1', '-print0']);
    assert.deepEqual(
      entries.map((e) => [e.name, e.path, e.kind]),
      [
        ['a b', '/work/d/a b', 'file'],
        ['$(x); y', '/work/d/$(x); y', 'file'],
      ],
    );
    await box.files.mkdir('/work/new dir; rm -rf /');
    assert.deepEqual(execs.at(-1)?.cmd, ['mkdir', '-p', '--', '/work/new dir; rm -rf /']);
    await box.files.remove('/work/old');
    assert.deepEqual(execs.at(-1)?.cmd, ['rm', '-rf', '--', '/work/old']);
    assert.equal(await box.files.exists('/work/d'), true);
    assert.equal(await box.files.exists('/work/gone'), false);
  });

  test('files: failures are CellErrors with the guest command message; relative paths never reach the guest', async () => {
    const before = execs.length;
    await assert.rejects(box.files.mkdir('relative'), isInvalidArgument);
    await assert.rejects(box.files.remove('/'), isInvalidArgument);
    await assert.rejects(box.files.list('/work/file'), (err: unknown) => isInvalidArgument(err) && /not a directory/.test(err.message));
    assert.equal(execs.length, before);
    await assert.rejects(box.files.mkdir('/work/file'), (err: unknown) => isInvalidArgument(err) && /File exists/.test(err.message));
    await assert.rejects(box.files.list('/nope'), isNotFound);
  });

  test('pty.create: a tty exec of the size asked for; write, resize, wait with the exit code; kill', async () => {
    let screen = '';
    const pty = await box.pty.create({ cols: 100, rows: 30, cmd: ['pty'], env: { A: '1' }, cwd: '/srv', onData: (d) => void (screen += Buffer.from(d).toString()) });
    await pty.write('echo hi\n');
    await pty.resize({ cols: 120, rows: 40 });
    await pty.write('exit\n');
    const result = await pty.wait();
    assert.equal(result.exitCode, 5);
    assert.equal(screen, 'size 100x30\r\necho hi\nresized 120x40\r\nexit\n');
    const spec = execs.at(-1)!;
    assert.deepEqual([spec.env, spec.workingDir, spec.terminal?.size], [['A=1'], '/srv', { cols: 120, rows: 40 }]);
    await assert.rejects(pty.resize({ cols: 80, rows: 24 }), (err: unknown) => isConflict(err), 'an ended pty cannot be resized');
    assert.equal(await pty.kill(), false, 'nothing to kill any more');

    await assert.rejects(
      box.pty.create({ cols: 0, rows: 24, cmd: ['pty'], onData: () => {} }).then((p) => p.wait()),
      (err: unknown) => isInvalidArgument(err),
      'sizes are checked by celld',
    );
    const sleeper = await box.pty.create({ cols: 80, rows: 24, cmd: ['sleep'], onData: () => {} });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await sleeper.kill(), true);
    assert.deepEqual([(await sleeper.wait()).exitCode, (await sleeper.wait()).signal], [137, 9]);
  });

  test('error helpers name the code; nothing else matches', async () => {
    const err = await Sandbox.connect('ghost', { client }).then(
      () => assert.fail('connected to a VM that is not there'),
      (e: unknown) => e,
    );
    assert.ok(isNotFound(err));
    assert.ok(hasErrorCode(err, ErrorCodes.NOT_FOUND));
    assert.ok(!isConflict(err) && !isVmNotRunning(err) && !isAbortError(err));
    assert.ok(!isNotFound(new Error('not_found')), 'only CellErrors have codes');
    assert.ok(!isNotFound(undefined));
  });

  test('every call takes a signal and a timeout in ms', async () => {
    await assert.rejects(client.vms.get('box', { signal: AbortSignal.abort() }), { name: 'AbortError' });
    const started = Date.now();
    await assert.rejects(client.info({ timeoutMs: 50 }), { name: 'TimeoutError' });
    assert.ok(Date.now() - started < 2000);
    await box.stop({ graceMs: 2500 });
    assert.deepEqual(stops, [2.5], 'graceMs is sent as the wire seconds');
  });
  test('a handle nobody iterates keeps only the newest 16 MiB of output, not all of it', async () => {
    const handle = await box.commands.start(['flood']);
    await handle.wait();
    const kept: Buffer[] = [];
    for await (const { data } of handle) kept.push(data);
    const bytes = kept.reduce((n, c) => n + c.length, 0);
    assert.ok(bytes <= 16 * 1024 * 1024 && bytes >= 15 * 1024 * 1024, `kept ${bytes} bytes`);
    assert.equal(kept.at(-1)![0], 23, 'the newest output is what is kept');
  });
});
