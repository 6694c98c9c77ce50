import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';
import { Api } from '../../api/routes.js';
import type { TerminalServerMessage } from '../../api/vms.js';
import type { Ctx } from '../context.js';

/**
 * A shell in the VM, in the page: xterm.js over celld's terminal WebSocket. Keystrokes go as
 * binary frames, the terminal's bytes come back as binary frames, size changes as JSON text.
 * Returns what closes it (the shell ends with the socket).
 */
export function openTerminal(host: HTMLElement, ctx: Ctx, ref: string, onEnd: (message: string) => void): () => void {
  const term = new Terminal({ cursorBlink: true, fontSize: 13, fontFamily: 'ui-monospace, Menlo, Consolas, monospace', scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(host);
  fit.fit();
  const socket = ctx.client.socket(Api.vms.terminal, { params: { ref }, query: { cols: term.cols, rows: term.rows } });
  const encoder = new TextEncoder();
  let ended = false;
  const end = (message: string) => {
    if (ended) return;
    ended = true;
    term.write(`\r\n\x1b[2m[${message}]\x1b[0m\r\n`);
    onEnd(message);
  };
  socket.onmessage = (e: MessageEvent<ArrayBuffer | string>) => {
    if (typeof e.data !== 'string') return term.write(new Uint8Array(e.data));
    const message = JSON.parse(e.data) as TerminalServerMessage;
    end(message.type === 'exit' ? `exited ${message.exitCode}` : `error: ${message.error.message}`);
  };
  socket.onclose = (e) => end(e.code === 1000 ? 'closed' : `closed (${e.reason || e.code})`);
  socket.onopen = () => term.focus();
  const typed = term.onData((data) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
  });
  const resized = term.onResize(({ cols, rows }) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'resize', cols, rows }));
  });
  const observer = new ResizeObserver(() => fit.fit());
  observer.observe(host);
  return () => {
    observer.disconnect();
    typed.dispose();
    resized.dispose();
    socket.close();
    term.dispose();
  };
}
