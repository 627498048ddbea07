import multipart from '@fastify/multipart';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from '../adapters/registry.js';
import type { Engine } from '../engine/engine.js';
import type { Inference } from '../engine/inference.js';
import { installErrorHandler } from './errors.js';
import { adminRoutes } from './routes/admin.js';
import { inferenceRoutes } from './routes/inference.js';
import { operationsRoutes } from './routes/operations.js';

export interface AppDeps {
  logger: Logger;
  inference: Inference;
  engine: Engine;
  registry: Registry;
  bodyLimitBytes: number;
  adminToken: string;
  maxAdapterBytes: number;
  readiness: () => { ready: boolean; details: Record<string, unknown> };
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: deps.logger as unknown as FastifyBaseLogger,
    bodyLimit: deps.bodyLimitBytes,
    genReqId: () => crypto.randomUUID(),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true } },
  });
  await app.register(swagger, {
    openapi: {
      info: { title: 'softprompt-server', version: '1.0.0', description: 'Multi-task inference with hot-swappable soft prompts on one frozen base model.' },
      components: { securitySchemes: { adminToken: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(multipart, { limits: { fileSize: deps.maxAdapterBytes, files: 3, fields: 0, parts: 3, fieldNameSize: 100, headerPairs: 100 } });
  installErrorHandler(app);
  inferenceRoutes(app, deps.inference);
  adminRoutes(app, deps.registry, deps.adminToken, deps.maxAdapterBytes);
  operationsRoutes(app, deps);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
