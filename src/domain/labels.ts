import { CellError, ErrorCodes } from './errors.js';

/**
 * Labels (`--label k=v`, Docker's): free-form tags on VMs and snapshots, shown by inspect and used
 * by list filters. Forks and snapshots inherit their source's, and add their own on top.
 */
export type Labels = Record<string, string>;

const KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;
const MAX_LABELS = 64;
const MAX_VALUE = 512;

/** `["team=ml", "tier"]` -> `{ team: "ml", tier: "" }`; undefined for none. */
export function parseLabels(items: readonly string[] | undefined): Labels | undefined {
  if (!items || items.length === 0) return undefined;
  if (items.length > MAX_LABELS) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `at most ${MAX_LABELS} labels`);
  const labels: Labels = {};
  for (const item of items) {
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? '' : item.slice(eq + 1);
    if (!KEY.test(key)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--label ${JSON.stringify(item)}: a key is letters, digits and . _ / - (up to 128), as in team=ml`);
    // eslint-disable-next-line no-control-regex
    if (value.length > MAX_VALUE || /[\x00-\x1f\x7f]/.test(value)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `--label ${key}: a value is up to ${MAX_VALUE} characters, no control characters`);
    labels[key] = value;
  }
  return labels;
}

/** The source's labels with `added` on top (a fork, a snapshot); undefined for none. */
export function mergeLabels(base: Labels | undefined, added: Labels | undefined): Labels | undefined {
  const merged = { ...(base ?? {}), ...(added ?? {}) };
  return Object.keys(merged).length > 0 ? merged : undefined;
}

/** `--filter label=k` (has the key) and `label=k=v` (has that value): all must hold. */
export function matchesLabels(labels: Labels | undefined, filters: readonly string[]): boolean {
  return filters.every((f) => {
    const eq = f.indexOf('=');
    const key = eq < 0 ? f : f.slice(0, eq);
    if (!labels || !Object.hasOwn(labels, key)) return false;
    return eq < 0 || labels[key] === f.slice(eq + 1);
  });
}
