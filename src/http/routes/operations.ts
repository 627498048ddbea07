import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AppDeps } from '../app.js';
import { ErrorBody } from '../schemas.js';

const Health = Type.Object({ status: Type.Literal('ok') }, { examples: [{ status: 'ok' }] });
const Ready = Type.Object(
  {
    status: Type.String(),
    model: Type.String(),
    provider: Type.String(),
    adapters: Type.Integer(),
    store: Type.String(),
    degraded: Type.Boolean({ description: 'The shared adapter store is away: serving goes on from memory, admin writes get 503' }),
  },
  { examples: [{ status: 'ready', model: 'gpt2', provider: 'cpu', adapters: 7, store: 'filesystem', degraded: false }] },
);

export function operationsRoutes(app: FastifyInstance, deps: AppDeps): void {
  app.get('/healthz', { schema: { tags: ['operations'], summary: 'Liveness', response: { 200: Health } }, logLevel: 'warn' }, async () => ({ status: 'ok' as const }));
  app.get(
    '/readyz',
    { schema: { tags: ['operations'], summary: 'Readiness: model loaded, registry in sync, an inference worker able to run', response: { 200: Ready, 503: Type.Intersect([ErrorBody, Type.Partial(Ready)]) } }, logLevel: 'warn' },
    async (_req, reply) => {
      const { ready, details } = deps.readiness();
      // No lane can run while every inference worker fails to start (it is retried with backoff).
      const workers = deps.engine.canRun;
      if (ready && workers) return reply.code(200).send({ status: 'ready', ...details });
      const message = workers ? 'the server is not ready' : 'no inference worker can run; restarting with backoff';
      return reply.code(503).send({ error: { code: 'not_ready', message }, ...details });
    },
  );
}
