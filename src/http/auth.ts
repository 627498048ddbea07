import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { ServerError } from '../errors.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** A check of `Authorization: Bearer <token>` against allowed tokens, in constant time per token. */
export function bearerGuard(tokens: string[], what: string): (req: FastifyRequest) => Promise<void> {
  const allowed = tokens.map(digest);
  return async (req) => {
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    // Comparing digests keeps the comparison length-independent as well.
    const given = digest(m ? m[1].trim() : '');
    if (!m || !allowed.some((t) => timingSafeEqual(t, given))) {
      throw new ServerError('unauthorized', `a valid bearer token is required for ${what}`, { 'www-authenticate': 'Bearer' });
    }
  };
}
