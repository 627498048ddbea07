import Fastify from 'fastify';
import t from 'tap';
import { loadConfig } from '../../src/config.js';
import { bearerGuard } from '../../src/http/auth.js';
import { installErrorHandler } from '../../src/http/errors.js';
import { registerRateLimit } from '../../src/http/rate-limit.js';
import { startServer } from '../helpers.js';

/** The inference scope as app.ts builds it (guard, then limit), around a route that does nothing. */
async function scope(env: Record<string, string>) {
  const config = loadConfig(env);
  const app = Fastify({ trustProxy: config.trustProxy });
  installErrorHandler(app);
  await app.register(async (s) => {
    if (config.apiTokens.length > 0) s.addHook('onRequest', bearerGuard(config.apiTokens, 'inference'));
    await registerRateLimit(s, config.rateLimitPerMinute, config.apiTokens);
    s.post('/infer', async () => ({ ok: true }));
  });
  await app.ready();
  return app;
}
type App = Awaited<ReturnType<typeof scope>>;
const hit = (app: App, headers: Record<string, string> = {}, remoteAddress = '127.0.0.1') => app.inject({ method: 'POST', url: '/infer', headers, remoteAddress });

t.test('without API_TOKENS, made-up bearer tokens share their address bucket', async (t) => {
  const app = await scope({ RATE_LIMIT_PER_MINUTE: '3' });
  const statuses = [];
  for (let i = 0; i < 6; i++) statuses.push((await hit(app, { authorization: `Bearer made-up-${i}` })).statusCode);
  t.same(statuses, [200, 200, 200, 429, 429, 429]);
  t.equal((await hit(app, {}, '10.0.0.2')).statusCode, 200, 'another address has its own bucket');
  const limited = await hit(app);
  t.equal(limited.json().error.code, 'rate_limited');
  t.ok(Number(limited.headers['retry-after']) > 0);
});

t.test('with API_TOKENS, a bucket belongs to the canonical token, whatever spaces surround it', async (t) => {
  const app = await scope({ RATE_LIMIT_PER_MINUTE: '2', API_TOKENS: 'tok-a,tok-b' });
  t.equal((await hit(app, { authorization: 'Bearer tok-a' })).statusCode, 200);
  t.equal((await hit(app, { authorization: 'Bearer tok-a\u00a0\u00a0' }, '10.0.0.9')).statusCode, 200, 'trailing non-breaking spaces authenticate');
  t.equal((await hit(app, { authorization: 'Bearer  tok-a\u00a0' }, '10.0.0.7')).statusCode, 429, 'and count in the same bucket, from any address');
  t.equal((await hit(app, { authorization: 'Bearer tok-b' })).statusCode, 200, 'another token has its own bucket');
  t.equal((await hit(app, { authorization: 'Bearer tok-c' })).statusCode, 401, 'an unknown token is refused');
  t.equal((await hit(app, { authorization: 'Bearer tok-a-and-more' })).statusCode, 401, 'a token with a valid prefix is refused');
});

t.test('TRUST_PROXY decides whose X-Forwarded-For names the client', async (t) => {
  for (const [trust, separate] of [['', false], ['loopback', true], ['10.0.0.0/8', false]] as const) {
    const app = await scope({ RATE_LIMIT_PER_MINUTE: '1', TRUST_PROXY: trust });
    const a = await hit(app, { 'x-forwarded-for': '203.0.113.1' });
    const b = await hit(app, { 'x-forwarded-for': '203.0.113.2' });
    t.equal(a.statusCode, 200, `TRUST_PROXY='${trust}': first client`);
    t.equal(b.statusCode, separate ? 200 : 429, `TRUST_PROXY='${trust}': a second client behind the proxy ${separate ? 'has its own bucket' : 'shares the proxy address'}`);
  }
});

t.test('the server wires it: made-up tokens share one bucket on the inference routes', async (t) => {
  const server = await startServer({ RATE_LIMIT_PER_MINUTE: '2', ADMIN_TOKEN: 'a', WORKERS: '1' });
  t.teardown(() => server.close());
  const statuses = [];
  // An empty body is a 400 after the limit, so no model work is done.
  for (let i = 0; i < 4; i++) statuses.push((await server.app.inject({ method: 'POST', url: '/v1/tasks/base/score', payload: {}, headers: { authorization: `Bearer x${i}` } })).statusCode);
  t.same(statuses, [400, 400, 429, 429]);
});
