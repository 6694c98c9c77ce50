import type { Command } from 'commander';
import { withClient } from '../action.js';
import { rawTerminal, type HostTty } from '../terminal.js';

/** Ctrl-]: the detach key of telnet and `virsh console`; Ctrl-C must reach the guest. */
export const DETACH_BYTE = 0x1d;

/** Splits what the user typed at the detach key: what goes to the guest, and whether to detach. */
export function beforeDetach(chunk: Buffer): { send: Buffer; detach: boolean } {
  const at = chunk.indexOf(DETACH_BYTE);
  return at < 0 ? { send: chunk, detach: false } : { send: chunk.subarray(0, at), detach: true };
}

export function register(program: Command): void {
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
        const onInput = (chunk: Buffer) => {
          const { send, detach } = beforeDetach(chunk);
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
