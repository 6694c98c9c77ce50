import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the dashboard is served: its pages need no token (they hold none); its API calls do. */
export const UI_PREFIX = '/ui';

/**
 * The page may load and call nothing but celld itself (no CDN, no outside request even if a VM's
 * name or log line tried to inject one). xterm.js sets styles from script, hence 'unsafe-inline'
 * for styles only.
 */
const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.map': 'application/json',
};

/** dist/ui from the compiled server (dist/server) or from the sources run through tsx (src/server). */
export function findUiAssets(): string | null {
  for (const rel of ['../ui/', '../../dist/ui/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(`${dir}index.html`)) return dir;
  }
  return null;
}

/**
 * Serves the dashboard's files (npm run build puts them in dist/ui) at /ui. The files are read
 * once, at start-up, and only those names are served: no path from the URL reaches the file system.
 */
export function uiRoutes(app: FastifyInstance, dir: string | null = findUiAssets()): void {
  const files = new Map<string, { type: string; body: Buffer }>();
  if (dir) {
    for (const name of readdirSync(dir)) {
      const type = TYPES[extname(name)];
      if (type) files.set(name, { type, body: readFileSync(`${dir}${name}`) });
    }
  }
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    const name = (req.params as { file?: string }).file || 'index.html';
    reply
      .header('content-security-policy', CONTENT_SECURITY_POLICY)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-cache');
    const file = files.get(name);
    if (!file) {
      const missing = files.size === 0 ? 'the dashboard was not built: run npm run build in the checkout celld runs from' : `no such file: ${name}`;
      return reply.code(404).type('text/plain; charset=utf-8').send(missing);
    }
    return reply.type(file.type).send(file.body);
  };
  app.route({ method: 'GET', url: UI_PREFIX, handler: async (_req, reply) => reply.redirect(`${UI_PREFIX}/`) });
  app.route({ method: 'GET', url: `${UI_PREFIX}/`, handler });
  app.route({ method: 'GET', url: `${UI_PREFIX}/:file`, handler });
}
