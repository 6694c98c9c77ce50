/** Reading registry response bodies without trusting their size. */

/**
 * At most `max` bytes of a response body; the rest is not read (the stream is cancelled).
 * `truncated` says whether there was more.
 */
export async function readBodyPrefix(res: Response, max: number): Promise<{ bytes: Buffer; truncated: boolean }> {
  if (!res.body) return { bytes: Buffer.alloc(0), truncated: false };
  const reader = res.body.getReader();
  const parts: Buffer[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes: Buffer.concat(parts, total), truncated: false };
      const chunk = Buffer.from(value);
      if (total + chunk.length > max) {
        parts.push(chunk.subarray(0, max - total));
        total = max;
        await reader.cancel().catch(() => undefined);
        return { bytes: Buffer.concat(parts, total), truncated: true };
      }
      parts.push(chunk);
      total += chunk.length;
    }
  } finally {
    reader.releaseLock();
  }
}
