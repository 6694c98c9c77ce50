/**
 * A guest's OOM kills, as its agent reports them (docs/protocol.md, OOM), made fit to record as
 * `oom` events. The guest is not trusted: the pid must be a pid, the process name is cut to 64
 * bytes and loses every control character, and each VM gets a few events a second at most.
 */

/** Longest process name kept (the kernel's is 15 bytes; its \xNN escapes make it longer). */
export const OOM_NAME_MAX_BYTES = 64;
/** Linux's PID_MAX_LIMIT. */
const PID_MAX = 4 * 1024 * 1024;

export interface OomKill {
  pid: number;
  process: string;
}

/** The kill as it may be recorded, or null when the pid is not one. */
export function oomKill(pid: number, name: Buffer): OomKill | null {
  if (!Number.isInteger(pid) || pid < 1 || pid > PID_MAX) return null;
  let text = name.subarray(0, OOM_NAME_MAX_BYTES).toString('utf8');
  // A multi-byte character cut at the 64th byte decodes to U+FFFD: dropped with the cut.
  if (name.length > OOM_NAME_MAX_BYTES) text = text.replace(/\uFFFD$/, '');
  // C0 and C1 controls, DEL, and the Unicode line and paragraph separators and bidi overrides.
  const process = text.replace(/[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, '');
  return { pid, process: process === '' ? '?' : process };
}

/**
 * A token bucket per VM: `burst` events at once, then `perSecond`. Events over it are counted, and
 * the next event let through says how many were left out before it.
 */
export class EventRateLimit {
  private tokens: number;
  private last: number;
  private dropped = 0;

  constructor(
    private readonly burst = 5,
    private readonly perSecond = 2,
    now = Date.now(),
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** null: leave this event out; else how many were left out since the last one let through. */
  take(now = Date.now()): { suppressed: number } | null {
    this.tokens = Math.min(this.burst, this.tokens + (Math.max(0, now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < 1) {
      this.dropped++;
      return null;
    }
    this.tokens -= 1;
    const suppressed = this.dropped;
    this.dropped = 0;
    return { suppressed };
  }
}

/** The attributes of a VM's `oom` event. */
export function oomAttributes(kill: OomKill, suppressed: number): Record<string, string> {
  return { pid: String(kill.pid), process: kill.process, ...(suppressed > 0 ? { suppressed: String(suppressed) } : {}) };
}
