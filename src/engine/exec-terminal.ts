import { AgentErrorCode, checkTtySize, type TtySize } from '../agent/frame.js';
import { CellError, ErrorCodes } from '../domain/errors.js';

/** What a terminal exec needs of its agent session. */
export interface Resizable {
  resize(size: TtySize): Promise<void>;
}

/** The default size of a terminal nobody gave one (docker's and most emulators' 80x24). */
export const DEFAULT_TTY_SIZE: TtySize = { rows: 24, cols: 80 };

/**
 * The pseudo-terminal of one exec (`cell exec -t`, the SDK's pty): its size, and resizes passed on
 * to the guest once the exec runs. A resize that comes before the exec started is kept and sent
 * when it does (a window resized while the command was still being looked up).
 */
export class ExecTerminal {
  private session: Resizable | undefined;
  private sent: TtySize;

  constructor(public size: TtySize = DEFAULT_TTY_SIZE) {
    checkTtySize(size);
    this.sent = size;
  }

  /** Resolves once the guest has the new size (at once while the exec is not running yet). */
  async resize(size: TtySize): Promise<void> {
    checkTtySize(size);
    this.size = { rows: size.rows, cols: size.cols };
    if (!this.session) return;
    this.sent = this.size;
    await this.session.resize(this.size).catch((err: unknown) => {
      // The exec ended while the resize was on its way: as if it had come a moment later.
      if (err instanceof CellError && err.details?.agentCode === AgentErrorCode.UNKNOWN_ID) throw new CellError(ErrorCodes.NOT_FOUND, 'the exec has ended');
      throw err;
    });
  }

  /** The exec started: from now on resizes go to it (and one that came meanwhile goes now). */
  attach(session: Resizable): void {
    this.session = session;
    if (this.sent.rows !== this.size.rows || this.sent.cols !== this.size.cols) this.resize(this.size).catch(() => {});
  }
}
