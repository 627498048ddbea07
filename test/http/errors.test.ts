import { gzipSync } from 'node:zlib';
import { request } from 'node:http';
import t from 'tap';
import { startServer } from '../helpers.js';

const server = await startServer({ MAX_QUEUE: '4', MAX_BATCH_SIZE: '1' });
t.teardown(() => server.close());
const post = (url: string, payload: unknown, headers: Record<string, string> = {}) =>
  server.app.inject({ method: 'POST', url, payload: payload as object, headers });

t.test('schema and routing errors use the contract shape', async (t) => {
  const bad = await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: '{"prompt": ', headers: { 'content-type': 'application/json' } });
  t.equal(bad.statusCode, 400);
  t.equal(bad.json().error.code, 'invalid_request');
  const missing = await post('/v1/tasks/base/generate', { max_tokens: 3 });
  t.equal(missing.statusCode, 400);
  t.equal(missing.json().error.code, 'invalid_request');
  const range = await post('/v1/tasks/base/generate', { prompt: 'x', logprobs: 21 });
  t.equal(range.json().error.code, 'invalid_request');
  const extra = await post('/v1/tasks/base/generate', { prompt: 'x', bogus: 1 });
  t.equal(extra.statusCode, 400, 'unknown fields are refused');
  const unknown = await post('/v1/tasks/nope/generate', { prompt: 'x' });
  t.equal(unknown.statusCode, 404);
  t.equal(unknown.json().error.code, 'task_not_found');
  const traversal = await post('/v1/tasks/..%2F..%2Fetc/generate', { prompt: 'x' });
  t.equal(traversal.statusCode, 404, 'a path in a task id is just an unknown task');
  const notClassify = await post('/v1/tasks/kjv-prompt/classify', { input: 'x' });
  t.equal(notClassify.statusCode, 400);
  t.equal(notClassify.json().error.code, 'not_a_classification_task');
  const tooLong = await post('/v1/tasks/kjv-prompt/generate', { prompt: 'word '.repeat(300), max_tokens: 300 });
  t.equal(tooLong.statusCode, 413);
  t.equal(tooLong.json().error.code, 'prompt_too_long');
  t.notOk(JSON.stringify(tooLong.json()).includes('at '), 'no stack trace');
  const big = await post('/v1/tasks/base/generate', { prompt: 'x'.repeat(2 * 1024 * 1024) });
  t.equal(big.statusCode, 413);
  const gzipped = await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: gzipSync('{"prompt":"x"}'), headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' } });
  t.equal(gzipped.statusCode, 415, 'a compressed body');
  t.equal(gzipped.json().error.code, 'unsupported_media_type');
  t.match(gzipped.json().error.message, /Content-Encoding "gzip" is not supported/);
  const identity = await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: '{"prompt":"x","max_tokens":1}', headers: { 'content-type': 'application/json', 'content-encoding': 'identity' } });
  t.equal(identity.statusCode, 200, 'identity is no encoding');
  for (const type of ['text/plain', 'application/xml']) {
    const other = await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: '{"prompt":"x"}', headers: { 'content-type': type } });
    t.equal(other.statusCode, 415, `a ${type} body`);
    t.equal(other.json().error.code, 'unsupported_media_type');
  }
});

t.test('a full queue answers 429 with Retry-After, and the server keeps serving', async (t) => {
  const results = await Promise.all(Array.from({ length: 12 }, () => post('/v1/tasks/base/generate', { prompt: 'In the beginning', max_tokens: 30, temperature: 0 })));
  const refused = results.filter((r) => r.statusCode === 429);
  t.ok(refused.length > 0, `${refused.length} of 12 refused`);
  for (const r of refused) {
    t.equal(r.json().error.code, 'overloaded');
    t.ok(Number(r.headers['retry-after']) >= 1);
  }
  t.ok(results.filter((r) => r.statusCode === 200).length >= 4);
  const after = await post('/v1/tasks/base/generate', { prompt: 'love', max_tokens: 2 });
  t.equal(after.statusCode, 200);
});

t.test('healthz and readyz', async (t) => {
  t.equal((await server.app.inject('/healthz')).statusCode, 200);
  const ready = await server.app.inject('/readyz');
  t.equal(ready.statusCode, 200);
  t.equal(ready.json().adapters, 9);
});

t.test('top_k is bounded (at most 1000): 400 beyond', async (t) => {
  const over = await post('/v1/tasks/base/generate', { prompt: 'x', top_k: 1001, max_tokens: 1 });
  t.equal(over.statusCode, 400);
  t.equal(over.json().error.code, 'invalid_request');
  t.equal((await post('/v1/tasks/base/generate', { prompt: 'x', top_k: 1000, max_tokens: 1 })).statusCode, 200);
});

t.test('finding 1 under overload: a prompt array that does not fit the queue is refused whole; none of it is queued', async (t) => {
  // MAX_BATCH_SIZE 1, MAX_QUEUE 4, two workers: two requests run, three wait, so one more prompt fits but two do not.
  const until = async (ok: () => boolean) => {
    for (let i = 0; i < 400 && !ok(); i++) await new Promise((r) => setTimeout(r, 5));
  };
  const long = (i: number) => post('/v1/tasks/base/generate', { prompt: `fill ${i}`, max_tokens: 400, temperature: 0, ignore_eos: true });
  const fill = [long(0), long(1)];
  await until(() => server.engine.running === 2);
  fill.push(long(2), long(3), long(4));
  await until(() => server.engine.queueDepth === 3);
  t.equal(server.engine.queueDepth, 3);
  for (const stream of [true, false]) {
    const res = await post('/v1/completions', { model: 'base', prompt: ['one', 'two'], max_tokens: 4, stream });
    t.equal(res.statusCode, 429, `stream: ${stream}`);
    t.equal(res.json().error.code, 'overloaded');
    t.equal(server.engine.queueDepth, 3, 'no prompt of the refused request was queued');
  }
  for (const r of await Promise.all(fill)) t.equal(r.statusCode, 200);
  t.equal((await post('/v1/completions', { model: 'base', prompt: ['one', 'two'], max_tokens: 2 })).statusCode, 200, 'the server keeps serving');
});

t.test('414 and 431 keep the error shape', async (t) => {
  await server.app.listen({ port: 0, host: '127.0.0.1' });
  const port = (server.app.server.address() as { port: number }).port;
  const raw = (path: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; body: { error: { code: string; message: string } } }>((resolve, reject) => {
      const req = request({ port, path, method: 'POST', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
        let data = '';
        res.on('data', (c) => (data += c));
        res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(data || `{"error":{"code":"empty body ${res.statusCode}"}}`) }));
      });
      req.on('error', reject);
      req.end('{"prompt":"x"}');
    });
  const longId = await raw(`/v1/tasks/${'a'.repeat(200)}/generate`);
  t.equal(longId.status, 414);
  t.equal(longId.body.error.code, 'uri_too_long');
  const longUrl = await raw(`/v1/tasks/base/generate?${'q'.repeat(20_000)}`);
  t.equal(longUrl.status, 431);
  t.equal(longUrl.body.error.code, 'headers_too_large');
  const bigHeader = await raw('/v1/tasks/base/generate', { 'x-big': 'h'.repeat(20_000) });
  t.equal(bigHeader.status, 431);
  t.equal(bigHeader.body.error.code, 'headers_too_large');
  t.type(bigHeader.body.error.message, 'string');
});

t.test('score with nothing to score is a 400 whether or not eos is asked; a soft prompt predicts the first token', async (t) => {
  for (const eos of [false, true]) {
    const res = await post('/v1/tasks/base/score', { prompt: '', completion: '', raw: true, eos });
    t.equal(res.statusCode, 400, `empty prompt and completion, eos ${eos}`);
    t.equal(res.json().error.code, 'invalid_request');
  }
  const prompted = await post('/v1/tasks/kjv-prompt/score', { prompt: '', completion: '', raw: true, eos: true });
  t.equal(prompted.statusCode, 200);
  t.equal(prompted.json().tokens, 1, 'the soft prompt predicts end-of-text');
});
