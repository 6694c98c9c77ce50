import type { Db } from './database.js';
import type { TokenRecord, TokenScope } from '../domain/api-token.js';

interface TokenRow {
  id: string;
  name: string;
  scope: string;
  secret_hash: string;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
}

function fromRow(row: TokenRow): TokenRecord {
  return { id: row.id, name: row.name, scope: row.scope as TokenScope, createdAt: row.created_at, expiresAt: row.expires_at, lastUsedAt: row.last_used_at };
}

/** API tokens' records: the secret only as its hash (domain/api-token.ts). */
export class TokenStore {
  constructor(private readonly db: Db) {}

  insert(token: TokenRecord, secretHash: string): void {
    this.db
      .prepare('INSERT INTO api_tokens (id, name, scope, secret_hash, created_at, expires_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, NULL)')
      .run(token.id, token.name, token.scope, secretHash, token.createdAt, token.expiresAt);
  }

  /** The record and its secret's hash. */
  withHash(id: string): { token: TokenRecord; secretHash: string } | undefined {
    const row = this.db.prepare('SELECT * FROM api_tokens WHERE id = ?').get(id) as TokenRow | undefined;
    return row ? { token: fromRow(row), secretHash: row.secret_hash } : undefined;
  }

  byName(name: string): TokenRecord | undefined {
    const row = this.db.prepare('SELECT * FROM api_tokens WHERE name = ?').get(name) as TokenRow | undefined;
    return row ? fromRow(row) : undefined;
  }

  get(id: string): TokenRecord | undefined {
    return this.withHash(id)?.token;
  }

  list(): TokenRecord[] {
    return (this.db.prepare('SELECT * FROM api_tokens ORDER BY created_at, name').all() as TokenRow[]).map(fromRow);
  }

  touch(id: string, at: string): void {
    this.db.prepare('UPDATE api_tokens SET last_used_at = ? WHERE id = ?').run(at, id);
  }

  delete(id: string): boolean {
    return this.db.prepare('DELETE FROM api_tokens WHERE id = ?').run(id).changes > 0;
  }
}
