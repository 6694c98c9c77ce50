/**
 * Splits a byte stream into lines (for `application/x-ndjson`). Reading pauses while the consumer
 * is busy with a line, so a slow consumer slows the producer down instead of buffering everything.
 * A last line without a trailing newline is still yielded.
 */
export async function* ndjsonLines(source: AsyncIterable<Buffer | string>): AsyncGenerator<string> {
  let pending: Buffer[] = [];
  for await (const piece of source) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece) : piece;
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      const part = chunk.subarray(start, nl);
      yield (pending.length ? Buffer.concat([...pending, part]) : part).toString('utf8');
      pending = [];
      start = nl + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
  if (pending.length) yield Buffer.concat(pending).toString('utf8');
}
