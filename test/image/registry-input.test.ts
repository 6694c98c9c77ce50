/**
 * What a registry (or its token server) sends back is input like a guest's frames: an error body
 * without end must not be read without end, and a token answer must be a token before it goes
 * into an Authorization header.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CellError } from '../../src/domain/errors.js';
import { errorText } from '../../src/image/registry/transport.js';
import { Authenticator } from '../../src/image/registry/authenticator.js';

/** A response body that never ends (a hostile or broken server), 16 KiB a millisecond. */
function endless(status = 500): Response {
  const chunk = new Uint8Array(16 * 1024).fill(0x41);
  const pull = (c: ReadableStreamDefaultController<Uint8Array>) => new Promise<void>((resolve) => setTimeout(() => (c.enqueue(chunk), resolve()), 1));
  return new Response(new ReadableStream({ pull }), { status, statusText: 'Internal Server Error' });
}

function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`still reading after ${ms} ms`)), ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

test("a registry's error body is read only so far, and its message kept to one short line", async () => {
  const text = await within(errorText(endless()), 3000);
  assert.ok(text.length <= 210, `${text.length} characters`);
  const forged = new Response(JSON.stringify({ errors: [{ code: 'DENIED', message: `\x1b[2J\nlevel=info msg="forged"${'x'.repeat(5000)}` }] }), { status: 403 });
  const said = await errorText(forged);
  assert.match(said, /^DENIED: /);
  assert.doesNotMatch(said, /[\x00-\x1f]/);
  assert.ok(said.length <= 210);
  // Well-formed errors read as before.
  assert.equal(await errorText(new Response(JSON.stringify({ errors: [{ code: 'NAME_UNKNOWN', message: 'repository name not known' }] }), { status: 404 })), 'NAME_UNKNOWN: repository name not known');
});

/** An Authenticator whose token server answers with `answer`. */
async function tokenFrom(answer: () => Response): Promise<string> {
  const auth = new Authenticator('reg.example', undefined, (async () => answer()) as typeof fetch);
  const challenge = new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer realm="http://127.0.0.1:1/token",service="reg"' } });
  return auth.onUnauthorized(challenge, ['repository:a/b:pull']);
}

test("a token server's answer is bounded and must hold a printable token", async () => {
  assert.equal(await tokenFrom(() => Response.json({ token: 'eyJhbGciOi.J9.x-_' })), 'Bearer eyJhbGciOi.J9.x-_');
  assert.equal(await tokenFrom(() => Response.json({ access_token: 'abc', expires_in: 300 })), 'Bearer abc');
  for (const [label, answer] of [
    ['JSON null (a TypeError before)', () => new Response('null')],
    ['a token that is an object (sent as "Bearer [object Object]" before)', () => Response.json({ token: { a: 1 } })],
    ['a token with a line break (header injection)', () => Response.json({ token: 'abc\r\nX-Evil: 1' })],
    ['an answer without end (read without end before)', () => endless(200)],
  ] as const) {
    await assert.rejects(
      within(tokenFrom(answer), 3000),
      (err: unknown) => err instanceof CellError && err.code === 'registry_error',
      label,
    );
  }
});
