import rateLimit from '@fastify/rate-limit';
import type { FastifyInstance } from 'fastify';
import { ServerError } from '../errors.js';
import { clientIdentity } from './auth.js';

/** Inference requests per minute per identity: the authenticated API token, else the client address. */
export async function registerRateLimit(scope: FastifyInstance, perMinute: number, apiTokens: string[]): Promise<void> {
  if (perMinute <= 0) return;
  await scope.register(rateLimit, {
    max: perMinute,
    timeWindow: 60_000,
    keyGenerator: clientIdentity(apiTokens),
    errorResponseBuilder: (_req, ctx) =>
      new ServerError('rate_limited', `rate limit of ${ctx.max} requests per minute exceeded; retry in ${Math.ceil(ctx.ttl / 1000)} s`, { 'retry-after': String(Math.ceil(ctx.ttl / 1000)) }),
  });
}
