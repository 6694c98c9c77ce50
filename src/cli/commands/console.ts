import type { Command } from 'commander';
import { withClient } from '../action.js';
import { DetachKeys, hostSize, parseDetachKeys, rawTerminal, type HostTty } from '../terminal.js';
import { streamed } from '../context.js';

/** Ctrl-]: the detach key of telnet and `virsh console`; Ctrl-C must reach the guest. */
export const CONSOLE_DETACH_KEYS: readonly number[] = [0x1d];

export function register(program: Command): void {
  registerConsole(program);
  registerAttach(program);
}

function registerConsole(program: Command): void {
  program
    .command('console')
    .description("attach to a running VM's serial console: what the guest writes there (kernel messages, /dev/console) and, unless --no-stdin, your keystrokes to its serial input; Ctrl-] detaches and leaves the VM running")
    .summary("attach to a VM's serial console (Ctrl-] detaches)")
    .argument('<vm>', 'VM name, id, or id prefix')
    .option('--no-stdin', 'only watch: send nothing to the guest')
    .addHelpText(
      'after',
      `
One console session per VM at a time. The guest's agent does not read the serial line: what you
type reaches a program the guest runs on it (e.g. cell exec -d VM -- setsid -c sh -i <>/dev/ttyS0
>&0 2>&0 in busybox images). The console log of everything the guest wrote is kept either way
(serial.log in the VM's folder; cut back past the log size cap).

Examples:
  cell console box                                  # Ctrl-] to detach
  cell console --no-stdin box > console.txt &      # record what the guest prints`,
    )
    .action(
      withClient(async (client, ref: string, flags: { stdin: boolean }) => {
        const host: HostTty = { stdin: process.stdin, stdout: process.stdout };
        const detached = new AbortController();
        const session = await client.vms.console(ref, {
          onData: (data) => {
            process.stdout.write(data);
          },
          signal: detached.signal,
        });
        process.stderr.write(`[attached to ${ref}'s console${flags.stdin ? '; Ctrl-] detaches' : ''}]\r\n`);
        const terminal = flags.stdin ? rawTerminal(host, () => {}) : undefined;
        const keys = new DetachKeys(CONSOLE_DETACH_KEYS);
        const onInput = (chunk: Buffer) => {
          const { send, detach } = keys.feed(chunk);
          if (send.length > 0) session.write(send);
          if (detach) detached.abort();
        };
        if (flags.stdin) process.stdin.on('data', onInput);
        // Ctrl-C without a terminal in raw mode (a pipe, --no-stdin) detaches too.
        const onSignal = () => detached.abort();
        process.on('SIGINT', onSignal);
        try {
          await session.ended;
        } finally {
          process.off('SIGINT', onSignal);
          if (flags.stdin) {
            process.stdin.off('data', onInput);
            process.stdin.pause();
          }
          terminal?.restore();
        }
        process.stderr.write(detached.signal.aborted ? `\r\n[detached from ${ref}'s console]\n` : `\r\n[${ref}'s console ended: the VM stopped]\n`);
      }),
    );
}

/** `cell attach`: the running main command of a VM, as docker attach. */
export function registerAttach(program: Command): void {
  program
    .command('attach')
    .description("attach to a running VM's main command: its output from now on and, when it was run with -i, your input; the detach keys (Ctrl-P Ctrl-Q) leave it running; its end ends cell attach with its exit code")
    .summary("attach to a VM's running main command")
    .argument('<vm>', 'VM name, id, or id prefix')
    .option('--no-stdin', 'only watch: send nothing to the command')
    .option('--detach-keys <keys>', 'the key sequence that detaches', 'ctrl-p,ctrl-q')
    .addHelpText(
      'after',
      `
What the command printed before you attached is in cell logs. Detaching (the keys, or Ctrl-C when
the command has no terminal) leaves the command and its stdin open; the end of cell's own stdin
(a pipe) closes the command's.

Examples:
  cell run -d -it --name box busybox -- sh
  cell attach box                          # a shell: Ctrl-P Ctrl-Q detaches, exit ends it
  cell run -d --name job busybox -- sh -c 'while sleep 1; do date; done'
  cell attach --no-stdin job               # follow its output; Ctrl-C detaches`,
    )
    .action(async (ref: string, flags: { stdin: boolean; detachKeys: string }, cmd: Command) => {
      const keys = new DetachKeys(parseDetachKeys(flags.detachKeys));
      process.exitCode = await streamed(cmd, async (client) => {
        const detached = new AbortController();
        let execId: string | undefined;
        let terminal: { restore(): void } | undefined;
        const host: HostTty = { stdin: process.stdin, stdout: process.stdout };
        // Typed bytes go through the detach keys; the rest is the command's stdin.
        const input = flags.stdin
          ? (async function* () {
              for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
                const { send, detach } = keys.feed(chunk);
                if (send.length > 0) yield send;
                if (detach) {
                  detached.abort();
                  return;
                }
              }
            })()
          : undefined;
        const onSignal = () => detached.abort();
        process.on('SIGINT', onSignal);
        try {
          const result = await client.vms.attach(ref, {
            onStdout: (d) => void process.stdout.write(d),
            onStderr: (d) => void process.stderr.write(d),
            signal: detached.signal,
            ...(input ? { stdin: input } : {}),
            onExec: (id) => {
              execId = id;
              if (flags.stdin && process.stdin.isTTY) {
                terminal = rawTerminal(host, (size) => void client.vms.resizeExec(id, size).catch(() => {}));
                client.vms.resizeExec(id, hostSize(host)).catch(() => {}); // a command without a terminal says no
              }
            },
          });
          if (result) return result.exitCode;
          process.stderr.write(`\r\n[detached from ${ref}]\n`);
          return 0;
        } finally {
          process.off('SIGINT', onSignal);
          terminal?.restore();
          if (flags.stdin) process.stdin.destroy();
        }
      });
    });
}
