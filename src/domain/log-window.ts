/**
 * `--tail N` over a log kept as chunks: the last N lines, whatever chunks they came in. Chunks are
 * cut at newlines, so what comes out starts at a line's start; memory stays at N lines.
 */
export interface LogPiece {
  time: string;
  stream: 'stdout' | 'stderr';
  text: string;
}

export class LogTail<T extends LogPiece> {
  private pieces: T[] = [];
  private head = 0;
  /** Pieces in `pieces[head..]` that end a line. */
  private lines = 0;

  constructor(private readonly limit: number) {}

  push(entry: T): void {
    if (this.limit === 0) return;
    for (const text of entry.text.match(/[^\n]*\n|[^\n]+$/g) ?? []) {
      this.pieces.push({ ...entry, text });
      if (text.endsWith('\n')) this.lines++;
    }
    // An unfinished last line counts as one, as `tail -n` counts it.
    const unfinished = () => (this.pieces.at(-1)!.text.endsWith('\n') ? 0 : 1);
    while (this.head < this.pieces.length && this.lines + unfinished() > this.limit) {
      if (this.pieces[this.head++]!.text.endsWith('\n')) this.lines--;
    }
    // Drop what was cut now and then rather than on every shift.
    if (this.head > 1024 && this.head * 2 > this.pieces.length) {
      this.pieces = this.pieces.slice(this.head);
      this.head = 0;
    }
  }

  entries(): T[] {
    return this.pieces.slice(this.head);
  }
}
