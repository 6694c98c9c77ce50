import type { TokenView } from '../api/tokens.js';
import { Api } from '../api/routes.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { tokens } = Api;

export interface CreateTokenOptions extends RequestOptions {
  /** read: GET only; write: everything but tokens (default); admin: tokens too. */
  scope?: 'read' | 'write' | 'admin';
  /** Expires this long from now; default never. */
  expiresInMs?: number;
}

/** Bearer tokens for celld's TCP listener (docs/remote.md). */
export class TokensClient {
  constructor(private readonly transport: Transport) {}

  list(opts: RequestOptions = {}): Promise<TokenView[]> {
    return this.transport.call(tokens.list, {}, opts);
  }

  /** The secret is answered here only: celld keeps its hash. */
  create(name: string, opts: CreateTokenOptions = {}): Promise<{ token: TokenView; secret: string }> {
    return this.transport.call(tokens.create, { body: { name, ...(opts.scope ? { scope: opts.scope } : {}), ...(opts.expiresInMs ? { expiresInMs: opts.expiresInMs } : {}) } }, opts);
  }

  remove(ref: string, opts: RequestOptions = {}): Promise<void> {
    return this.transport.call(tokens.remove, { params: { ref } }, opts);
  }
}
