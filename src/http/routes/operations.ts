import type { FastifyInstance } from 'fastify';
import type { AppDeps } from '../app.js';

export function operationsRoutes(app: FastifyInstance, deps: AppDeps): void {
  app.get('/healthz', { schema: { tags: ['operations'], summary: 'Liveness' }, logLevel: 'warn' }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { tags: ['operations'], summary: 'Readiness: model loaded and registry in sync' }, logLevel: 'warn' }, async (_req, reply) => {
    const { ready, details } = deps.readiness();
    return reply.code(ready ? 200 : 503).send(ready ? { status: 'ready', ...details } : { error: { code: 'not_ready', message: 'the server is not ready' }, ...details });
  });
}
