/**
 * The host's half of one exec's output flow control (docs/protocol.md, "Flow control"), as SSH
 * channel windows and HTTP/2 stream windows work: the guest may have EXEC_WINDOW bytes of output
 * in flight; what the reader took is granted back (CREDIT) unless the reader is behind. The guest
 * is not trusted to keep to it: `receive` reports a guest that went more than one frame past.
 */
import { EXEC_WINDOW } from './frame.js';

/** Credit is granted back in batches of this many bytes taken (a CREDIT frame per 64 KiB, not per chunk). */
export const GRANT_BATCH = EXEC_WINDOW / 4;

/**
 * How far past its credit a guest may go before its stream is closed: one output frame (the
 * agent's largest STDOUT payload). A conforming agent never goes past at all; so what celld holds
 * for a reader that stopped is bounded by EXEC_WINDOW + OVERRUN_SLACK per exec.
 */
export const OVERRUN_SLACK = 64 * 1024;

export class OutputCredit {
  /** Bytes the guest may still send; below zero while it is past its credit (by at most the slack). */
  private left = EXEC_WINDOW;
  /** Bytes the reader took that were not granted back yet. */
  private owed = 0;
  private held = true;

  /** `grant` sends a CREDIT frame; it is called only while not held. */
  constructor(private readonly grant: (bytes: number) => void) {}

  /** How far the guest is past its credit, in bytes (0 while within it). */
  get overrun(): number {
    return Math.max(0, -this.left);
  }

  /** Accounts for `n` bytes of output that arrived: false if they take the guest past its credit by more than the slack. */
  receive(n: number): boolean {
    this.left -= n;
    return this.left >= -OVERRUN_SLACK;
  }

  /** The reader took `n` bytes: they are granted back once a batch is owed, unless held. */
  consumed(n: number): void {
    this.owed += n;
    this.flush(GRANT_BATCH);
  }

  /** While held (the reader is behind, or flow control is not known to be on) nothing is granted. */
  hold(on: boolean): void {
    this.held = on;
    this.flush(1);
  }

  private flush(atLeast: number): void {
    if (this.held || this.owed < atLeast) return;
    const bytes = this.owed;
    this.owed = 0;
    this.left += bytes;
    this.grant(bytes);
  }
}
