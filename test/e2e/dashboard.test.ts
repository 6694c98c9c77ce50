import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import WebSocket from 'ws';
import { REPO, TestHome } from '../helpers/cell-home.js';

// The functions handed to page.* run in the browser; this file is compiled without the DOM's types
// (they would clash with Node's), so the little they use is declared here.
interface PageElement {
  textContent: string | null;
  getAttribute(name: string): string | null;
}
declare const document: { querySelector(selector: string): PageElement | null; querySelectorAll(selector: string): ArrayLike<PageElement> };

const CHROMIUM = '/usr/bin/chromium';
/** Screenshots of each step, for a person to look at (CI keeps the folder with the run). */
const SHOTS = join(REPO, '.cell-test', 'output', 'dashboard');

/**
 * The web dashboard in a real browser (Debian's chromium through puppeteer-core), against a real
 * celld on its TLS listener with the certificate it generated (pinned by its public key, as a
 * person accepting it once would): sign in with a token, see a VM started with `cell run -d`
 * appear with its stats, open its terminal and run a command, fork a snapshot from the tree and
 * see the forks. Every request the page makes goes to celld's origin.
 */
describe('web dashboard', () => {
  let h: TestHome;
  let url: string;
  let browser: Browser;
  let page: Page;
  const requests: string[] = [];
  const pageErrors: string[] = [];
  let shot = 0;
  const screenshot = async (name: string) => {
    await page.screenshot({ path: join(SHOTS, `${String(++shot).padStart(2, '0')}-${name}.png`), fullPage: true });
  };

  /** Clicks the button with this text in the element `within` selects. */
  const clickButton = async (within: string, text: string) => {
    const buttons = await page.$$(`${within} button`);
    for (const b of buttons) if ((await b.evaluate((e) => e.textContent)) === text) return b.click();
    assert.fail(`no ${text} button in ${within}`);
  };

  before(async () => {
    rmSync(SHOTS, { recursive: true, force: true });
    mkdirSync(SHOTS, { recursive: true });
    h = new TestHome({ CELL_LISTEN: '127.0.0.1:0' });
    await h.ok(['ps']);
    ({ url } = JSON.parse(readFileSync(join(h.home, 'remote.json'), 'utf8')) as { url: string });
    // Chromium trusts celld's self-signed certificate by the hash of its public key, nothing else.
    const cert = new X509Certificate(readFileSync(join(h.home, 'tls', 'cert.pem')));
    const spki = createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root in CI: chromium's own sandbox needs an unprivileged user.
      args: ['--no-sandbox', `--ignore-certificate-errors-spki-list=${spki}`, '--no-first-run', '--disable-background-networking', '--disable-component-update'],
      defaultViewport: { width: 1360, height: 860 },
    });
    page = await browser.newPage();
    page.on('request', (r) => requests.push(r.url()));
    page.on('pageerror', (err) => pageErrors.push(String(err)));
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await h?.cleanup();
  });

  test('sign in, a VM appears, its terminal runs a command, forks from the snapshot tree; only celld is ever asked', async (t) => {
    // A failing step leaves a picture of the page as it was.
    let passed = false;
    t.after(async () => {
      if (!passed) await screenshot('failed').catch(() => {});
    });
    // `cell ui`: a link with a fresh write token in its fragment.
    const link = (await h.ok(['ui'])).stdout.trim();
    assert.match(link, new RegExp(`^${url}/ui/#token=cell_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$`));

    // The sign-in page: a wrong token is refused with celld's message; the link's token signs in.
    await page.goto(`${url}/ui/`);
    await page.waitForSelector('form.login');
    await page.type('#token', 'cell_000000000000_' + 'x'.repeat(43));
    await page.click('form.login button');
    await page.waitForFunction(() => document.querySelector('form.login .error')?.textContent?.length);
    assert.match(await page.$eval('form.login .error', (e) => e.textContent!), /token/i);
    await screenshot('login-refused');
    await page.goto(link);
    await page.waitForSelector('table.vms');
    assert.ok(!page.url().includes('token='), 'the token leaves the address bar at once');
    await page.waitForFunction(() => document.querySelector('table.vms tbody')?.textContent?.includes('No VMs'));

    // A VM started from the CLI appears, running, and its CPU and memory sparklines fill in.
    await h.ok(['run', '-d', '--name', 'web', '--label', 'team=ui', 'busybox', '--', 'sh', '-c', 'echo started-$((40+2)); sleep 1d']);
    await page.waitForSelector('tr[data-vm="web"] .state.running', { timeout: 15_000 });
    await page.waitForFunction(
      () => (document.querySelector('tr[data-vm="web"] td.stat polyline')?.getAttribute('points') ?? '').split(' ').length >= 2,
      { timeout: 20_000 },
    );
    assert.match(await page.$eval('tr[data-vm="web"]', (e) => e.textContent!), /team=ui/);
    assert.match(await page.$eval('aside#events', (e) => e.textContent!), /vm start\s*web/, 'the event feed shows the start');
    await screenshot('vms');

    // Its page: the main command's log, and a terminal that runs what is typed.
    await page.click('tr[data-vm="web"] a');
    await page.waitForFunction(() => document.querySelector('pre.logs')?.textContent?.includes('started-42'), { timeout: 15_000 });
    await page.click('#open-terminal');
    await page.waitForSelector('#terminal .xterm-rows');
    // The shell's prompt first, so the keystrokes go to a shell that reads them.
    // The screen's rows as text (xterm.js draws spaces as no-break spaces).
    const screenRows = () => page.$$eval('#terminal .xterm-rows > div', (rows) => rows.map((r) => (r.textContent ?? '').replace(/\u00a0/g, ' ').trim()));
    const untilScreen = async (check: (rows: string[]) => boolean, what: string) => {
      for (const deadline = Date.now() + 15_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100))) {
        if (check(await screenRows())) return;
      }
      assert.fail(`the terminal never showed ${what}; it shows:\n${(await screenRows()).join('\n')}`);
    };
    await untilScreen((rows) => rows.some((r) => r.endsWith('#')), 'a prompt');
    await page.keyboard.type('echo from-the-browser-$((6*7)); uname -s\n');
    await untilScreen((rows) => rows.includes('from-the-browser-42') && rows.includes('Linux'), "the command's output");
    await screenshot('terminal');
    // exit ends the shell; the page says so.
    await page.keyboard.type('exit 3\n');
    await untilScreen((rows) => rows.includes('[exited 3]'), 'that the shell exited 3');

    // A snapshot taken from the CLI is in the tree under its VM; Fork with 2 makes two VMs under it.
    await h.ok(['snapshot', 'web', '--name', 'base']);
    await page.goto(`${url}/ui/#/snapshots`);
    await page.waitForSelector('li[data-vm="web"] li[data-snapshot="base"]');
    await page.$eval('#fork-count', (e) => ((e as unknown as { value: string }).value = '2'));
    await page.click('button[data-fork="base"]');
    await page.waitForFunction(() => document.querySelectorAll('li[data-snapshot="base"] > ul > li.vm').length === 2, { timeout: 30_000 });
    await page.waitForFunction(() => document.querySelector('header .status')?.textContent?.startsWith('forked base'));
    await page.waitForFunction(() => document.querySelectorAll('li[data-snapshot="base"] > ul > li.vm .state.running').length === 2, { timeout: 15_000 });
    await screenshot('snapshot-tree');
    const ps = (await h.ok(['ps', '--format', 'json'])).stdout;
    const vms = JSON.parse(ps) as { name: string; baseSnapshot: string | null; state: string }[];
    const base = vms.find((v) => v.name === 'web')!.baseSnapshot;
    assert.equal(vms.filter((v) => v.name !== 'web' && v.baseSnapshot === base && v.state === 'running').length, 2, 'two running forks of base');

    // The VM list's buttons: stop a fork, then remove it (after the page's confirmation).
    await page.goto(`${url}/ui/#/vms`);
    await page.waitForSelector('tr[data-vm="base-1"] .state.running');
    await clickButton('tr[data-vm="base-1"]', 'Stop');
    await page.waitForSelector('tr[data-vm="base-1"] .state.stopped', { timeout: 30_000 });
    page.once('dialog', (dialog) => void dialog.accept());
    await clickButton('tr[data-vm="base-1"]', 'Remove');
    await page.waitForFunction(() => !document.querySelector('tr[data-vm="base-1"]') && document.querySelector('tr[data-vm="base-2"]'), { timeout: 15_000 });
    assert.deepEqual((JSON.parse((await h.ok(['ps', '-a', '--format', 'json'])).stdout) as { name: string }[]).map((v) => v.name).sort(), ['base-2', 'web']);

    // Images, volumes, networks and the cache, with sizes.
    await page.goto(`${url}/ui/#/resources`);
    await page.waitForSelector('section#images td');
    assert.match(await page.$eval('section#images', (e) => e.textContent!), /busybox/);
    await screenshot('resources');

    // A shell that cannot start (no such user) while the client keeps typing: an error message,
    // the socket closed, celld unharmed.
    const token = link.split('#token=')[1]!;
    const celld = h.daemonPid();
    const pem = readFileSync(join(h.home, 'tls', 'cert.pem'), 'utf8');
    const refused = await new Promise<{ messages: string[]; code: number }>((resolve) => {
      const socket = new WebSocket(`${url.replace(/^https/, 'wss')}/v1/vms/web/terminal?user=nobody-here`, ['cellvm.terminal.v1', `bearer.${token}`], {
        ca: pem,
        checkServerIdentity: (() => undefined) as unknown as () => boolean,
      });
      const messages: string[] = [];
      let typing: NodeJS.Timeout | undefined;
      socket.on('open', () => {
        // A burst at once, before celld's close can arrive, then steady typing.
        for (let i = 0; i < 200; i++) socket.send(Buffer.from('x'));
        typing = setInterval(() => socket.readyState === WebSocket.OPEN && socket.send(Buffer.from('x')), 1);
      });
      socket.on('message', (data, binary) => !binary && messages.push(String(data)));
      socket.on('close', (code) => {
        clearInterval(typing);
        resolve({ messages, code });
      });
      socket.on('error', () => {});
    });
    assert.match(refused.messages.join(), /"type":"error"/);
    assert.equal((await h.ok(['ps'])).code, 0, 'celld still answers');
    assert.equal(h.daemonPid(), celld, 'the same celld (the CLI would start a new one)');

    // Nothing but celld: no CDN, no outside request, not even a favicon elsewhere.
    const origin = new URL(url).origin;
    const foreign = requests.filter((r) => !r.startsWith(`${origin}/`) && !r.startsWith('data:') && !r.startsWith(`wss://${new URL(url).host}/`));
    assert.deepEqual(foreign, [], 'every request goes to celld');
    assert.ok(requests.some((r) => r.startsWith(`${origin}/v1/`)), 'the page used the API');
    assert.deepEqual(pageErrors, [], 'no script error on the page');
    passed = true;
  });
});
