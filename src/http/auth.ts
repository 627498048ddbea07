import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { ServerError } from '../errors.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** The token of `Authorization: Bearer <token>`, trimmed by the rules API_TOKENS is parsed with (String.trim). */
function presented(req: FastifyRequest): string | null {
  const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '');
  return m ? m[1].trim() : null;
}

/**
 * Which configured token a request presents: its index, or -1. Every configured token is compared,
 * each in constant time over digests (so also length-independent), and trimming happens before,
 * so a token with trailing spaces is the same identity as the token itself.
 */
export function tokenMatcher(tokens: string[]): (req: FastifyRequest) => number {
  const allowed = tokens.map((t) => digest(t.trim()));
  return (req) => {
    const token = presented(req);
    if (token === null) return -1;
    const given = digest(token);
    let found = -1;
    allowed.forEach((t, i) => {
      if (timingSafeEqual(t, given) && found < 0) found = i;
    });
    return found;
  };
}

/** A check of `Authorization: Bearer <token>` against allowed tokens. */
export function bearerGuard(tokens: string[], what: string): (req: FastifyRequest) => Promise<void> {
  const match = tokenMatcher(tokens);
  return async (req) => {
    if (match(req) < 0) throw new ServerError('unauthorized', `a valid bearer token is required for ${what}`, { 'www-authenticate': 'Bearer' });
  };
}

/**
 * The identity a rate-limit bucket belongs to: the configured token a request authenticated with
 * (as `token:<index>`, never the text the client sent), else the client address (behind a proxy,
 * per TRUST_PROXY). Without API_TOKENS, made-up tokens identify nobody: they share the address's bucket.
 */
export function clientIdentity(tokens: string[]): (req: FastifyRequest) => string {
  const match = tokenMatcher(tokens);
  return (req) => {
    const i = tokens.length > 0 ? match(req) : -1;
    return i >= 0 ? `token:${i}` : `ip:${req.ip}`;
  };
}
