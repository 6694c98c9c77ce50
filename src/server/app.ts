import Fastify, { type FastifyInstance } from 'fastify';
import type { FastifyBaseLogger } from 'fastify';
import { statusForCode } from '../api/routes.js';
import { ErrorCodes, toCellError } from '../domain/errors.js';
import type { Engine } from '../engine/engine.js';
import { systemRoutes } from './routes/system.js';
import { vmRoutes } from './routes/vms.js';

/** The HTTP API in front of the engine. Errors become `{ error: { code, message, details } }`. */
export function buildApp(engine: Engine, logger: FastifyBaseLogger | false = false): FastifyInstance {
  const app: FastifyInstance = Fastify({
    loggerInstance: logger || undefined,
    disableRequestLogging: true,
    bodyLimit: 1024 * 1024,
    // A run or exec may last as long as the user's command does.
    requestTimeout: 0,
    connectionTimeout: 0,
  });

  // Stdin for a running exec arrives as a raw, possibly long, byte stream: hand it over unparsed.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  app.setErrorHandler((err, request, reply) => {
    const validation = (err as { validation?: unknown }).validation;
    const cell = validation
      ? { code: ErrorCodes.INVALID_ARGUMENT, message: `invalid request: ${(err as Error).message}`, details: undefined }
      : toCellError(err);
    if (cell.code === ErrorCodes.INTERNAL) request.log.error({ err }, 'request failed');
    reply.code(statusForCode(cell.code)).send({ error: { code: cell.code, message: cell.message, details: cell.details } });
  });

  app.setNotFoundHandler((request, reply) => {
    reply.code(404).send({ error: { code: ErrorCodes.NOT_FOUND, message: `no such endpoint: ${request.method} ${request.url}` } });
  });

  systemRoutes(app, engine);
  vmRoutes(app, engine);
  return app;
}
