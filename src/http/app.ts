import multipart from '@fastify/multipart';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from '../adapters/registry.js';
import type { Engine } from '../engine/engine.js';
import { Ensembles } from '../engine/ensemble.js';
import type { Inference } from '../engine/inference.js';
import { ServerError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import type { BaseModel } from '../model/base-model.js';
import { bearerGuard } from './auth.js';
import { installErrorHandler } from './errors.js';
import { adminRoutes } from './routes/admin.js';
import { completionsRoutes } from './routes/completions.js';
import { ensembleRoutes } from './routes/ensembles.js';
import { inferenceRoutes } from './routes/inference.js';
import { modelsRoutes } from './routes/models.js';
import { operationsRoutes } from './routes/operations.js';
import { tokenizeRoutes } from './routes/tokenize.js';

export interface AppDeps {
  logger: Logger;
  inference: Inference;
  engine: Engine;
  registry: Registry;
  model: BaseModel;
  metrics: Metrics;
  bodyLimitBytes: number;
  adminToken: string;
  apiTokens: string[];
  rateLimitPerMinute: number;
  maxAdapterBytes: number;
  readiness: () => { ready: boolean; details: Record<string, unknown> };
}

declare module 'fastify' {
  interface FastifyRequest {
    errorCode?: string;
  }
}

function bearer(req: FastifyRequest): string | undefined {
  return /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1];
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes,
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
  await app.register(multipart, { limits: { fileSize: deps.maxAdapterBytes, files: 3, fields: 0, parts: 3, fieldNameSize: 100, headerPairs: 100 } });
  installErrorHandler(app);
  app.addHook('onSend', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });

  // Inference: optional API tokens, and a per-token (else per-address) rate limit.
  await app.register(async (scope) => {
    if (deps.apiTokens.length > 0) scope.addHook('onRequest', bearerGuard(deps.apiTokens, 'inference'));
    if (deps.rateLimitPerMinute > 0) {
      await scope.register(rateLimit, {
        max: deps.rateLimitPerMinute,
        timeWindow: 60_000,
        keyGenerator: (req) => bearer(req) ?? req.ip,
        errorResponseBuilder: (_req, ctx) =>
          new ServerError('rate_limited', `rate limit of ${ctx.max} requests per minute exceeded; retry in ${Math.ceil(ctx.ttl / 1000)} s`, { 'retry-after': String(Math.ceil(ctx.ttl / 1000)) }),
      });
    }
    scope.addHook('onResponse', async (req, reply) => {
      const task = (req.params as { task?: string }).task ?? (req.body as { model?: string } | undefined)?.model ?? 'unknown';
      deps.metrics.request(task, req.routeOptions.url ?? 'unknown', reply.statusCode, reply.statusCode >= 400 ? (req.errorCode ?? String(reply.statusCode)) : undefined);
    });
    inferenceRoutes(scope, deps.inference);
    completionsRoutes(scope, deps.inference);
    ensembleRoutes(scope, new Ensembles(deps.inference, deps.registry));
    tokenizeRoutes(scope, deps.registry, deps.model);
    modelsRoutes(scope, deps.registry, Math.floor(Date.now() / 1000));
  });
  adminRoutes(app, deps.registry, deps.adminToken, deps.maxAdapterBytes);
  operationsRoutes(app, deps);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  app.get('/metrics', { schema: { tags: ['operations'], summary: 'Prometheus metrics (text format)', produces: ['text/plain'], response: { 200: { type: 'string', examples: ['sps_queue_depth 0'] } } }, logLevel: 'warn' }, async (_req, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics()),
  );
  return app;
}
