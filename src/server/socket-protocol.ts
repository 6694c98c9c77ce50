import { BEARER_SUBPROTOCOL_PREFIX } from '../api/contract.js';
import { allRoutes } from '../api/routes.js';

const SUBPROTOCOLS = new Set(allRoutes().flatMap((r) => (r.reply.kind === 'websocket' ? [r.reply.subprotocol] : [])));

/**
 * The subprotocol celld answers a WebSocket upgrade with: the route's own, never the one carrying
 * the token (a browser would otherwise see its token echoed in the handshake). None of ours offered:
 * the handshake names none (a browser that offered some then refuses the connection itself).
 */
export function socketProtocol(offered: Set<string>): string | false {
  for (const protocol of offered) if (SUBPROTOCOLS.has(protocol)) return protocol;
  return false;
}

/** `Bearer TOKEN` from a `Sec-WebSocket-Protocol` header's `bearer.TOKEN` entry (browsers cannot set Authorization on a WebSocket). */
export function bearerFromSubprotocols(header: string | string[] | undefined): string | undefined {
  const entries = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').map((p) => p.trim());
  const token = entries.find((p) => p.startsWith(BEARER_SUBPROTOCOL_PREFIX));
  return token ? `Bearer ${token.slice(BEARER_SUBPROTOCOL_PREFIX.length)}` : undefined;
}

/** Whether Node handed this request over as an upgrade (its `upgrade` flag, which @types/node 20 does not declare). */
export function isUpgrade(raw: object): boolean {
  return (raw as { upgrade?: unknown }).upgrade === true;
}
