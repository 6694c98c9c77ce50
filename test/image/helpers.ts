import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openDatabase, type Db } from '../../src/store/database.js';

/** A fresh store root and database per test, and what tests check in them. */
export interface TestStore {
  root: string;
  db: Db;
  cleanup: () => void;
}

export function makeStore(): TestStore {
  const root = mkdtempSync('/tmp/cellt-store-');
  const db = openDatabase(join(root, 'cell.db'));
  return {
    root,
    db,
    cleanup: () => {
      db.close();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Files under the store that an image operation leaves: blobs, disks, temp files, staging dirs. */
export function storeFiles(root: string): string[] {
  const out: string[] = [];
  for (const sub of ['blobs', 'images', 'tmp']) {
    const dir = join(root, sub);
    if (!existsSync(dir)) continue;
    for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
      if (!e.isDirectory()) out.push(join(e.parentPath, e.name).slice(root.length + 1));
    }
    if (sub === 'tmp') for (const e of readdirSync(dir)) out.push(`tmp/${e}`);
  }
  return [...new Set(out)].sort();
}

export function imageRows(db: Db): number {
  return (db.prepare('SELECT COUNT(*) AS n FROM images').get() as { n: number }).n + (db.prepare('SELECT COUNT(*) AS n FROM image_blobs').get() as { n: number }).n;
}

/** Copies a base disk's tree out with debugfs (no mount needed) for assertions. */
export function dumpDisk(disk: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync('/tmp/cellt-dump-');
  execFileSync('debugfs', ['-R', `rdump / ${dir}`, disk], { stdio: 'pipe' });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
