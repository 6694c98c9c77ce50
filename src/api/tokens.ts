import { Type, type Static } from '@sinclair/typebox';
import { created, empty, json, route } from './contract.js';
import { RefParams } from './common.js';
import { TOKEN_SCOPES } from '../domain/api-token.js';

/** Bearer tokens for celld's TCP listener (docs/remote.md). */

/** read: GET only; write: everything but tokens; admin: tokens too (domain/api-token.ts). */
const TokenScope = Type.Union(TOKEN_SCOPES.map((scope) => Type.Literal(scope)));

export const TokenView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  scope: TokenScope,
  createdAt: Type.String(),
  /** null: never expires. */
  expiresAt: Type.Union([Type.String(), Type.Null()]),
  lastUsedAt: Type.Union([Type.String(), Type.Null()]),
});
export type TokenView = Static<typeof TokenView>;

export const CreateTokenRequest = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 63 }),
    /** Default: write. */
    scope: Type.Optional(TokenScope),
    /** From now; none: never expires. */
    expiresInMs: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: false },
);

export const tokens = {
  list: route({ method: 'GET', path: '/v1/tokens', summary: 'API tokens (never their secrets)', reply: json(Type.Array(TokenView)) }),
  create: route({
    method: 'POST',
    path: '/v1/tokens',
    summary: 'make an API token; its secret is in this answer only',
    body: CreateTokenRequest,
    reply: created(Type.Object({ token: TokenView, secret: Type.String() })),
  }),
  remove: route({ method: 'DELETE', path: '/v1/tokens/:ref', summary: 'revoke a token (by name or id): it fails from the next request on', params: RefParams, reply: empty() }),
};
