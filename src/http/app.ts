import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from '../adapters/registry.js';
import type { Engine } from '../engine/engine.js';
import type { Inference } from '../engine/inference.js';
import type { Metrics } from '../metrics.js';
import { bearerGuard } from './auth.js';
import { installErrorHandler } from './errors.js';
import { registerRateLimit } from './rate-limit.js';
import { adminRoutes } from './routes/admin.js';
import { completionsRoutes } from './routes/completions.js';
import { inferenceRoutes } from './routes/inference.js';
import { operationsRoutes } from './routes/operations.js';

export interface AppDeps {
  logger: Logger;
  inference: Inference;
  engine: Engine;
  registry: Registry;
  metrics: Metrics;
  bodyLimitBytes: number;
  adminToken: string;
  apiTokens: string[];
  rateLimitPerMinute: number;
  /** Fastify's trustProxy: whose X-Forwarded-For to believe for the client address (TRUST_PROXY). */
  trustProxy?: boolean | string[];
  maxAdapterBytes: number;
  readiness: () => { ready: boolean; details: Record<string, unknown> };
}

declare module 'fastify' {
  interface FastifyRequest {
    errorCode?: string;
  }
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes,
    trustProxy: deps.trustProxy ?? false,
    genReqId: (req) => (typeof req.headers['x-request-id'] === 'string' && req.headers['x-request-id'].length <= 128 ? req.headers['x-request-id'] : crypto.randomUUID()),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true } },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'softprompt-server', version: '1.0.0', description: 'Multi-task inference with hot-swappable soft prompts on one frozen base model.' },
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer' }, apiToken: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  // Fields are admitted (a few, small) only so that admin.ts can say "send it as a file" instead of a limit error.
  await app.register(multipart, { limits: { fileSize: deps.maxAdapterBytes, files: 3, fields: 3, fieldSize: 64 * 1024, parts: 6, fieldNameSize: 100, headerPairs: 100 } });
  installErrorHandler(app);
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });

  // Inference: optional API tokens, and a per-identity rate limit (src/http/rate-limit.ts).
  await app.register(async (scope) => {
    if (deps.apiTokens.length > 0) scope.addHook('onRequest', bearerGuard(deps.apiTokens, 'inference'));
    await registerRateLimit(scope, deps.rateLimitPerMinute, deps.apiTokens);
    scope.addHook('onResponse', async (req, reply) => {
      const task = (req.params as { task?: string }).task ?? (req.body as { model?: string } | undefined)?.model ?? 'unknown';
      deps.metrics.request(task, req.routeOptions.url ?? 'unknown', reply.statusCode, reply.statusCode >= 400 ? (req.errorCode ?? String(reply.statusCode)) : undefined);
    });
    inferenceRoutes(scope, deps.inference);
    completionsRoutes(scope, deps.inference);
  });
  adminRoutes(app, deps.registry, deps.adminToken, deps.maxAdapterBytes);
  operationsRoutes(app, deps);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { schema: { tags: ['operations'], summary: 'Prometheus metrics (text format)', produces: ['text/plain'], response: { 200: { type: 'string', examples: ['sps_queue_depth 0'] } } }, logLevel: 'warn' }, async (_req, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()),
  );
  return app;
}
