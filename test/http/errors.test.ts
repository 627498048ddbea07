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
