import t from 'tap';
import { startServer } from '../helpers.js';

t.test('API_TOKENS: inference needs one of them; operations stay open', async (t) => {
  const server = await startServer({ API_TOKENS: 'alpha,beta' });
  t.teardown(() => server.close());
  const gen = (headers: Record<string, string>) => server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'love', max_tokens: 2 }, headers });
  const none = await gen({});
  t.equal(none.statusCode, 401);
  t.equal(none.json().error.code, 'unauthorized');
  t.equal((await gen({ authorization: 'Bearer gamma' })).statusCode, 401);
  t.equal((await gen({ authorization: 'Bearer beta' })).statusCode, 200);
  t.equal((await server.app.inject('/healthz')).statusCode, 200);
});

t.test('rate limit per API token: 429 with the error shape', async (t) => {
  const server = await startServer({ API_TOKENS: 'alpha,beta', RATE_LIMIT_PER_MINUTE: '3' });
  t.teardown(() => server.close());
  const gen = (token: string) => server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'love', max_tokens: 1 }, headers: { authorization: `Bearer ${token}` } });
  const codes = [];
  for (let i = 0; i < 4; i++) codes.push((await gen('alpha')).statusCode);
  t.same(codes, [200, 200, 200, 429]);
  const limited = await gen('alpha');
  t.equal(limited.json().error.code, 'rate_limited');
  t.equal((await gen('beta')).statusCode, 200, 'another token has its own budget');
});

t.test('metrics: queue, batches, latencies, per-task counters folded past the limit', async (t) => {
  const server = await startServer({ METRICS_MAX_TASKS: '2' });
  t.teardown(() => server.close());
  // Made-up ids first (404, and 400 before the task is even looked up): they must not take labels.
  for (const task of ['squat-1', 'squat-2', 'squat-3']) {
    t.equal((await server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: { prompt: 'love' } })).statusCode, 404);
    t.equal((await server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: { prompt: 1 } })).statusCode, 400);
  }
  for (const task of ['base', 'kjv-prompt', 'pos-bitfit', 'define-prefix']) {
    await server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: { prompt: 'love', max_tokens: 3, temperature: 0, ignore_eos: true } });
  }
  await server.app.inject({ method: 'POST', url: '/v1/tasks/missing/generate', payload: { prompt: 'love' } });
  // Failures of the schema and of the framework count under the code their body names, as a handler's do.
  t.equal((await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: 'love', headers: { 'content-type': 'text/plain' } })).statusCode, 415);
  const res = await server.app.inject('/metrics');
  t.equal(res.statusCode, 200);
  const text = res.body;
  for (const name of ['sps_queue_depth', 'sps_batch_rows_bucket', 'sps_batch_tokens_bucket', 'sps_queue_wait_ms_bucket', 'sps_time_to_first_token_ms_bucket', 'sps_inter_token_ms_bucket', 'sps_adapter_cache_hits_total', 'sps_adapter_cache_misses_total', 'sps_adapter_cache_evictions_total', 'sps_adapter_cache_bytes', 'sps_adapters_registered', 'sps_event_loop_delay_p99_ms']) {
    t.match(text, new RegExp(`^${name}`, 'm'), name);
  }
  t.match(text, /sps_generated_tokens_total\{task="base"\} 3/);
  t.match(text, /sps_generated_tokens_total\{task="other"\} 6/, 'tasks past METRICS_MAX_TASKS are folded into other');
  t.match(text, /sps_errors_total\{task="unknown",code="task_not_found"\} 4/);
  t.match(text, /sps_errors_total\{task="unknown",code="invalid_request"\} 3\n/);
  t.match(text, /sps_errors_total\{task="base",code="unsupported_media_type"\} 1\n/);
  t.notMatch(text, /code="\d+"/, 'no failure is labelled by its bare status');
  t.notMatch(text, /squat/, 'made-up task ids have no series');
});

t.test('metrics: step forward and host time, rows by kind, prefill padding, KV batch gauges move', async (t) => {
  const server = await startServer({ WORKERS: '1' });
  t.teardown(() => server.close());
  const before = await server.app.inject('/metrics');
  t.match(before.body, /^sps_step_forward_ms_count 0$/m);
  const res = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'base', prompt: ['love', 'In the beginning God created'], max_tokens: 4, temperature: 0 } });
  t.equal(res.statusCode, 200);
  // Two prompts of different lengths in one request with BitFit (per-row biases): one padded prefill
  // run pads the shorter one. (The base model's rows above were packed into one run, unpadded.)
  const padded = await server.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'pos-bitfit', prompt: ['love', 'In the beginning God created'], max_tokens: 1 } });
  t.equal(padded.statusCode, 200);
  const text = (await server.app.inject('/metrics')).body;
  const value = (re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
  t.ok(value(/^sps_step_forward_ms_count (\d+)$/m) >= 4, 'every step observed');
  t.equal(value(/^sps_step_host_ms_count (\d+)$/m), value(/^sps_step_forward_ms_count (\d+)$/m));
  t.ok(value(/^sps_step_forward_ms_sum (\S+)$/m) > 0);
  t.ok(value(/^sps_step_rows_count\{kind="decode"\} (\d+)$/m) >= 3, 'decode steps counted');
  t.ok(value(/^sps_step_rows_sum\{kind="prefill"\} (\d+)$/m) >= 2, 'prefill rows counted');
  t.ok(value(/^sps_prefill_padded_tokens_total (\d+)$/m) > 0, 'the shorter prompt was padded');
  for (const name of ['sps_kv_rows', 'sps_kv_slots', 'sps_kv_capacity_columns', 'sps_kv_bytes']) t.match(text, new RegExp(`^${name}\\{worker="0"\\} \\d+`, 'm'), name);
  const perWorker = (name: string) => [...text.matchAll(new RegExp(`^${name}\\{worker="\\d+"\\} (\\d+)$`, 'gm'))].map((m) => Number(m[1]));
  t.ok(perWorker('sps_worker_adapters').reduce((a, b) => a + b, 0) >= 1, 'the worker that ran pos-bitfit holds it');
  t.ok(perWorker('sps_worker_adapter_bytes').reduce((a, b) => a + b, 0) > 0);
  t.ok(perWorker('sps_worker_gc_collections_total').length >= 1, 'collections counted per worker');
  // The KV gauges while a request runs, then after it finished (its row dropped, the batch freed).
  const kv = async () => {
    const body = (await server.app.inject('/metrics')).body;
    const g = (name: string) => Number(body.match(new RegExp(`^${name}\\{worker="0"\\} (\\d+)$`, 'm'))?.[1] ?? NaN);
    return { rows: g('sps_kv_rows'), slots: g('sps_kv_slots'), bytes: g('sps_kv_bytes') };
  };
  const long = server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'In the beginning', max_tokens: 200, temperature: 0, ignore_eos: true } });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let during = await kv();
  for (let i = 0; i < 500 && during.rows !== 1; i++) {
    await sleep(5);
    during = await kv();
  }
  t.equal(during.rows, 1, 'one live row while the request runs');
  t.ok(during.slots >= 1 && during.bytes > 0, 'its slot and buffers are counted');
  t.equal((await long).statusCode, 200);
  let after = await kv();
  for (let i = 0; i < 500 && after.slots !== 0; i++) {
    await sleep(5);
    after = await kv();
  }
  t.same(after, { rows: 0, slots: 0, bytes: 0 }, 'the finished row was dropped and the buffers freed');
});

t.test('graceful shutdown: admitted requests finish, new ones get 503 shutting_down', async (t) => {
  const server = await startServer();
  const inflight = server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'In the beginning', max_tokens: 200, temperature: 0, ignore_eos: true } });
  for (let i = 0; i < 200 && server.engine.running === 0; i++) await new Promise((r) => setTimeout(r, 5));
  const closing = server.close(10_000);
  await new Promise((r) => setTimeout(r, 10));
  const late = await server.inference.generate('base', { prompt: 'late', max_tokens: 2 }).catch((e: { code: string; status: number }) => e);
  t.equal((late as { code: string }).code, 'shutting_down');
  t.equal((late as { status: number }).status, 503);
  const done = await inflight;
  t.equal(done.statusCode, 200, 'the admitted request finished');
  t.equal(done.json().token_ids.length, 200);
  await closing;
});

t.test('readyz: 503 while no inference worker can run; requests then get 503 worker_crashed, nothing queued', async (t) => {
  const server = await startServer();
  t.teardown(() => server.close());
  t.equal((await server.app.inject('/readyz')).statusCode, 200);
  // What an executor reports while it backs off after failed starts (executor.test.ts drives the real thing).
  for (const e of server.executors) e.canRun = false;
  const ready = await server.app.inject('/readyz');
  t.equal(ready.statusCode, 503);
  t.equal(ready.json().error.code, 'not_ready');
  t.match(ready.json().error.message, /no inference worker/);
  const gen = await server.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'love', max_tokens: 2 } });
  t.equal(gen.statusCode, 503);
  t.equal(gen.json().error.code, 'worker_crashed');
  t.equal(server.engine.queueDepth, 0);
  for (const e of server.executors) e.canRun = true;
  t.equal((await server.app.inject('/readyz')).statusCode, 200);
});
