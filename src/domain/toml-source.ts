import { parse, TomlError } from 'smol-toml';
import { CellError, ErrorCodes } from './errors.js';

/**
 * A parsed TOML document that still knows where things were written, so a validation error can
 * say "build.toml:12: ..." like a compiler. TOML parsers hand back plain values without
 * positions; a line scan recovers them: table headers (`[a]`, `[[a.b]]`, with array tables
 * numbered in order) and the line of each `key =` inside them. Multi-line strings and arrays are
 * stepped over so their contents are not mistaken for keys.
 */
export class TomlSource {
  readonly data: Record<string, unknown>;
  private readonly lines = new Map<string, number>();

  constructor(
    readonly fileName: string,
    text: string,
  ) {
    try {
      this.data = parse(text) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof TomlError) {
        const first = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
        throw new CellError(ErrorCodes.BAD_BUILD_FILE, `${fileName}:${err.line}:${err.column}: bad TOML: ${first}`, {
          line: err.line,
          column: err.column,
        });
      }
      throw err;
    }
    this.scan(text);
  }

  /** The line of a table (`build.step[2]`) or key (`build.step[2].run`); falls back to its table's. */
  lineOf(path: string): number | undefined {
    for (let p = path; p; p = parentPath(p)) {
      const line = this.lines.get(p);
      if (line !== undefined) return line;
    }
    return undefined;
  }

  /** A `bad_build_file` error pointing at `path`. */
  error(path: string, message: string): CellError {
    const line = this.lineOf(path);
    return new CellError(ErrorCodes.BAD_BUILD_FILE, `${this.fileName}${line !== undefined ? `:${line}` : ''}: ${message}`, { line, path });
  }

  private scan(text: string): void {
    const arrayCounts = new Map<string, number>();
    let table = '';
    let openString: '"""' | "'''" | null = null;
    let depth = 0; // brackets open across lines (a multi-line array value)
    text.split('\n').forEach((raw, index) => {
      const lineNo = index + 1;
      let line = raw;
      if (openString) {
        const end = line.indexOf(openString);
        if (end < 0) return;
        line = line.slice(end + 3);
        openString = null;
      }
      if (depth === 0) {
        const arrayHeader = /^\s*\[\[\s*([^\]]+?)\s*\]\]/.exec(line);
        const tableHeader = arrayHeader ? null : /^\s*\[\s*([^\]]+?)\s*\]/.exec(line);
        if (arrayHeader) {
          const name = normaliseKeyPath(arrayHeader[1]!);
          const n = arrayCounts.get(name) ?? 0;
          arrayCounts.set(name, n + 1);
          table = `${resolveArrayPrefix(name, arrayCounts)}[${n}]`;
          this.lines.set(table, lineNo);
          return;
        }
        if (tableHeader) {
          table = resolveArrayPrefix(normaliseKeyPath(tableHeader[1]!), arrayCounts);
          if (!this.lines.has(table)) this.lines.set(table, lineNo);
          return;
        }
        const key = /^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)(\s*\.\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+))*\s*=/.exec(line);
        if (key) {
          const keyPath = normaliseKeyPath(key[0].slice(0, -1));
          this.lines.set(table ? `${table}.${keyPath}` : keyPath, lineNo);
        }
      }
      ({ openString, depth } = trackOpenings(line, depth));
    });
  }
}

function parentPath(path: string): string {
  const dot = path.lastIndexOf('.');
  const bracket = path.lastIndexOf('[');
  const cut = Math.max(dot, bracket);
  return cut <= 0 ? '' : path.slice(0, cut);
}

/** `a . "b c"` -> `a.b c`. */
function normaliseKeyPath(raw: string): string {
  return raw
    .split('.')
    .map((part) => part.trim().replace(/^"(.*)"$/, '$1').replace(/^'(.*)'$/, '$1'))
    .join('.');
}

/** Inside `[[build.step]]`, `[build.step.x]` belongs to the latest element: `build.step[N].x`. */
function resolveArrayPrefix(name: string, counts: Map<string, number>): string {
  const parts = name.split('.');
  let out = '';
  let plain = '';
  parts.forEach((part, i) => {
    plain = plain ? `${plain}.${part}` : part;
    out = out ? `${out}.${part}` : part;
    const n = counts.get(plain);
    if (n !== undefined && i < parts.length - 1) out = `${out}[${n - 1}]`;
  });
  return out;
}

/** After a line: is a multi-line string still open, and how many brackets are? (Quotes respected.) */
function trackOpenings(line: string, depth: number): { openString: '"""' | "'''" | null; depth: number } {
  let i = 0;
  while (i < line.length) {
    const c = line[i]!;
    if (c === '#') break;
    if (line.startsWith('"""', i) || line.startsWith("'''", i)) {
      const quote = line.slice(i, i + 3) as '"""' | "'''";
      const end = line.indexOf(quote, i + 3);
      if (end < 0) return { openString: quote, depth };
      i = end + 3;
      continue;
    }
    if (c === '"' || c === "'") {
      i++;
      while (i < line.length && line[i] !== c) i += c === '"' && line[i] === '\\' ? 2 : 1;
      i++;
      continue;
    }
    if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') depth = Math.max(0, depth - 1);
    i++;
  }
  return { openString: null, depth };
}
