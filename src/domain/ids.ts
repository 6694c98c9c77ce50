import { randomBytes } from 'node:crypto';
import { CellError, ErrorCodes } from './errors.js';

/** What newId makes: 64 lowercase hex digits (also the name of a VM's or snapshot's folder). */
export const ID_PATTERN = /^[0-9a-f]{64}$/;

/** 64 hex chars like Docker ids; the first 12 are what people see and type. */
export function newId(): string {
  return randomBytes(32).toString('hex');
}

export function shortId(id: string): string {
  return id.slice(0, 12);
}

const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

export function validateName(name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw new CellError(
      ErrorCodes.INVALID_ARGUMENT,
      `invalid name "${name}": use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit`,
    );
  }
  return name;
}

const ADJECTIVES = ['brave', 'calm', 'eager', 'fond', 'keen', 'lucid', 'merry', 'nimble', 'quiet', 'swift', 'tidy', 'vivid'];
const NOUNS = ['otter', 'falcon', 'lynx', 'heron', 'badger', 'cobra', 'ibis', 'marten', 'puffin', 'quokka', 'raven', 'wombat'];

/** A readable default name, Docker style; the caller retries on a clash. */
export function randomName(): string {
  const pick = (list: string[]) => list[randomBytes(1)[0]! % list.length]!;
  return `${pick(ADJECTIVES)}_${pick(NOUNS)}_${randomBytes(2).toString('hex')}`;
}

export const MIN_PREFIX = 3;

/** Whether `ref` could be the start of an id (resolveRef tries it as one). */
export function isIdPrefix(ref: string): boolean {
  return ref.length >= MIN_PREFIX && /^[0-9a-f]+$/.test(ref);
}

/**
 * The SQL condition for the rows a reference could mean (an exact id or name, or ids it begins,
 * found on the id index: every id beginning with a hex prefix sorts between it and it + 'g'),
 * with its parameters: stores give resolveRef these few records rather than all.
 */
export function refCondition(ref: string): { where: string; params: { ref: string; prefix: string | null } } {
  return {
    where: "(id = @ref OR name = @ref OR (@prefix IS NOT NULL AND id >= @prefix AND id < @prefix || 'g'))",
    params: { ref, prefix: isIdPrefix(ref) ? ref : null },
  };
}

export interface Named {
  id: string;
  name: string;
}

/**
 * Resolves a reference to one record: exact id, then exact name, then a unique id prefix of at
 * least 3 characters. An ambiguous prefix lists its candidates so the user can pick.
 */
export function resolveRef<T extends Named>(kind: string, ref: string, records: readonly T[]): T {
  const byId = records.find((r) => r.id === ref);
  if (byId) return byId;
  const byName = records.find((r) => r.name === ref);
  if (byName) return byName;
  if (isIdPrefix(ref)) {
    const matches = records.filter((r) => r.id.startsWith(ref));
    if (matches.length === 1) return matches[0]!;
    if (matches.length > 1) {
      const candidates = matches.map((m) => `${shortId(m.id)} (${m.name})`);
      throw new CellError(
        ErrorCodes.AMBIGUOUS_REF,
        `${kind} reference "${ref}" is ambiguous: ${candidates.join(', ')}`,
        { candidates: matches.map((m) => m.id) },
      );
    }
  }
  throw new CellError(ErrorCodes.NOT_FOUND, `no such ${kind}: ${ref}`);
}
