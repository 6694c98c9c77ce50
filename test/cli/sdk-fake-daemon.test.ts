import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CellClient, CellError } from '../../src/sdk/index.js';
import type { ErrorEvent } from '../../src/api/contract.js';
import type { ExecEvent, RunEvent, Vm } from '../../src/api/vms.js';

// The SDK against a tiny fake celld on a unix socket: wire handling only, no VMs.

const vm = (name: string, state = 'running') => ({ id: name.padEnd(64, '0'), name, state }) as unknown as Vm;
const b64 = (s: string) => Buffer.from(s).toString('base64');

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('SDK over a fake celld', () => {
  let dir: string;
  let server: http.Server;
  let client: CellClient;
  const stdinBodies = new Map<string, (body: Buffer) => void>();
  let hungClosed: Promise<void> = Promise.resolve();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cell-sdk-'));
    server = http.createServer(async (req, res) => {
      const send = (status: number, body?: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(body === undefined ? undefined : JSON.stringify(body));
      };
      const stream = (events: (RunEvent | ExecEvent | ErrorEvent)[], end = true) => {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        for (const e of events) res.write(JSON.stringify(e) + '\n');
        if (end) res.end();
      };
      const url = req.url ?? '';
      if (url === '/v1/ping') return send(200, { ok: true });
      if (url === '/v1/vms/nope') return send(404, { error: { code: 'not_found', message: 'no such VM: nope' } });
      if (url === '/v1/vms/weird') return send(500, { error: { code: 'brand_new_code', message: 'something new' } });
      if (url === '/v1/vms/box?force=true' && req.method === 'DELETE') return send(204);
      if (url === '/v1/vms/run') {
        const body = JSON.parse((await readBody(req)).toString()) as { name?: string; cmd: string[] };
        if (body.name === 'fail') {
          return stream([{ type: 'created', vm: vm('fail') }, { type: 'error', error: { code: 'boot_failed', message: 'VM failed to boot', details: { serialTail: 'no vda' } } }]);
        }
        if (body.name === 'hang') {
          hungClosed = new Promise((resolve) => res.on('close', resolve));
          return stream([{ type: 'created', vm: vm('hang') }, { type: 'running', vm: vm('hang') }], false);
        }
        return stream([
          { type: 'created', vm: vm('ok') },
          { type: 'running', vm: vm('ok') },
          { type: 'stdout', data: b64(`ran ${body.cmd.join(' ')}\n`) },
          { type: 'stderr', data: b64('warn\n') },
          { type: 'exit', exitCode: 3, signal: null, timedOut: false, durationMs: 12 },
          { type: 'done', vm: vm('ok', 'stopped') },
        ]);
      }
      if (url === '/v1/vms/box/exec') {
        const body = JSON.parse((await readBody(req)).toString()) as { stdin?: boolean };
        assert.equal(body.stdin, true);
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const input = new Promise<Buffer>((resolve) => stdinBodies.set('e1', resolve));
        res.write(JSON.stringify({ type: 'exec', execId: 'e1' }) + '\n');
        const text = (await input).toString();
        res.write(JSON.stringify({ type: 'stdout', data: b64(text.toUpperCase()) }) + '\n');
        res.end(JSON.stringify({ type: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 }) + '\n');
        return;
      }
      if (url === '/v1/vms/quick/exec') {
        // A command that exits without reading its stdin.
        await readBody(req);
        return stream([{ type: 'exec', execId: 'e2' }, { type: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 }]);
      }
      if (url === '/v1/execs/e2/stdin') {
        await readBody(req).catch(() => {});
        return send(404, { error: { code: 'not_found', message: 'no running exec e2 waits for stdin' } });
      }
      if (url === '/v1/execs/e1/stdin') {
        stdinBodies.get('e1')?.(await readBody(req));
        return send(204);
      }
      send(404, { error: { code: 'not_found', message: `no such endpoint: ${url}` } });
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'celld.sock'), resolve));
    client = await CellClient.connect({ socketPath: join(dir, 'celld.sock'), autoStart: false });
  });

  after(async () => {
    client.close();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  test('nothing listening: daemon_unavailable, without starting anything', async () => {
    await assert.rejects(CellClient.connect({ socketPath: join(dir, 'absent.sock'), autoStart: false }), (err: unknown) => {
      return err instanceof CellError && err.code === 'daemon_unavailable' && /not running/.test(err.message);
    });
  });

  test('error bodies become CellErrors; unknown codes become internal', async () => {
    await assert.rejects(client.vms.get('nope'), { name: 'CellError', code: 'not_found', message: 'no such VM: nope' });
    await assert.rejects(client.vms.get('weird'), { name: 'CellError', code: 'internal', message: 'something new' });
    await client.vms.remove('box', { force: true });
  });

  test('run streams output to the handlers and resolves with the exit status', async () => {
    const out: string[] = [];
    const seen: string[] = [];
    const result = await client.vms.run(
      { image: 'busybox', cmd: ['echo', 'hi'] },
      {
        onCreated: () => seen.push('created'),
        onRunning: () => seen.push('running'),
        onStdout: (c) => void out.push(`out:${c}`),
        // A handler may return a promise (backpressure): the stream waits for it.
        onStderr: (c) => new Promise<void>((resolve) => setTimeout(() => (out.push(`err:${c}`), resolve()), 20)),
      },
    );
    assert.deepEqual(seen, ['created', 'running']);
    assert.deepEqual(out, ['out:ran echo hi\n', 'err:warn\n']);
    assert.deepEqual({ ...result, vm: result.vm.state }, { exitCode: 3, signal: null, timedOut: false, durationMs: 12, vm: 'stopped' });
  });

  test('an error event after the headers rejects with its code and details', async () => {
    await assert.rejects(client.vms.run({ image: 'busybox', name: 'fail' }), (err: unknown) => {
      return err instanceof CellError && err.code === 'boot_failed' && err.details?.serialTail === 'no vda';
    });
  });

  test('aborting a run rejects with the abort reason and closes the connection', async () => {
    const controller = new AbortController();
    const pending = client.vms.run({ image: 'busybox', name: 'hang' }, { signal: controller.signal, onRunning: () => controller.abort() });
    await assert.rejects(pending, { name: 'AbortError' });
    await hungClosed; // celld sees the client go away: that is its cue to kill the command
  });

  test('exec streams stdin after the exec event', async () => {
    async function* input() {
      yield Buffer.from('hello ');
      yield 'world';
    }
    let out = '';
    const result = await client.vms.exec('box', { cmd: ['cat'] }, { stdin: input(), onStdout: (c) => void (out += c) });
    assert.equal(out, 'HELLO WORLD');
    assert.equal(result.exitCode, 0);
  });

  test('exec ends when the command does, even while its stdin source still waits for input', async () => {
    async function* terminal() {
      yield Buffer.from('typed');
      await new Promise(() => {}); // a terminal nobody types into
    }
    const result = await client.vms.exec('quick', { cmd: ['true'] }, { stdin: terminal() });
    assert.equal(result.exitCode, 0);
  });
});
