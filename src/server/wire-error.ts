import type { ErrorCode } from '../domain/errors.js';
import { stripControl } from '../domain/terminal-text.js';

/**
 * An error as it goes on the wire. Messages and string details can quote what a guest wrote (a
 * serial console tail, a ready check's output, an agent's answer) and end up on a terminal: no
 * control sequences leave celld.
 */
export function wireError(e: { code: ErrorCode; message: string; details?: Record<string, unknown> | undefined }) {
  const details = e.details && Object.fromEntries(Object.entries(e.details).map(([k, v]) => [k, typeof v === 'string' ? stripControl(v) : v]));
  return { code: e.code, message: stripControl(e.message), details };
}
