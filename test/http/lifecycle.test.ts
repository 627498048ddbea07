import { request } from 'node:http';
import t from 'tap';
import { startServer } from '../helpers.js';

// One worker, so that the crash below takes every running request with it.
const server = await startServer({ REQUEST_TIMEOUT_MS: '4000', WORKERS: '1', STEP_TIMEOUT_MS: '2000' });
t.teardown(() => server.close());
await server.app.listen({ port: 0, host: '127.0.0.1' });
const port = (server.app.server.address() as { port: number }).port;
const generate = (task: string, body: object) => server.app.inject({ method: 'POST', url: `/v1/tasks/${task}/generate`, payload: body });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a seeded request gives the same tokens alone and amid other traffic', async (t) => {
  const seeded = { prompt: 'You will', max_tokens: 24, temperature: 0.9, top_p: 0.95, top_k: 50, seed: 1234 };
  const alone = (await generate('fortune-ptuning', seeded)).json();
  t.equal(alone.token_ids.length > 0, true);
  const noise = Array.from({ length: 12 }, (_, i) =>
    generate(['base', 'kjv-prompt', 'pos-bitfit', 'define-prefix'][i % 4], { prompt: `noise ${i}`, max_tokens: 5 + i, temperature: 1 }),
  );
  const mixed = await Promise.all([...noise.slice(0, 6), generate('fortune-ptuning', seeded), ...noise.slice(6)]);
  t.same(mixed[6].json().token_ids, alone.token_ids);
  const other = (await generate('fortune-ptuning', { ...seeded, seed: 99 })).json();
  t.not(JSON.stringify(other.token_ids), JSON.stringify(alone.token_ids), 'another seed gives another sample');
});

t.test('stop strings end generation and are not returned', async (t) => {
  const full = (await generate('base', { prompt: 'love', raw: true, max_tokens: 20, temperature: 0 })).json();
  const stop = full.text.slice(5, 8);
  const cut = (await generate('base', { prompt: 'love', raw: true, max_tokens: 20, temperature: 0, stop: [stop] })).json();
  t.equal(cut.finish_reason, 'stop');
  t.equal(cut.text, full.text.slice(0, full.text.indexOf(stop)));
});

t.test('a request past its timeout gets 504 and its row is freed', async (t) => {
  const slow = await startServer({ REQUEST_TIMEOUT_MS: '30' });
  t.teardown(() => slow.close());
  const res = await slow.app.inject({ method: 'POST', url: '/v1/tasks/base/generate', payload: { prompt: 'In the beginning', max_tokens: 400, temperature: 1, ignore_eos: true } });
  t.equal(res.statusCode, 504);
  t.equal(res.json().error.code, 'request_timeout');
  await sleep(200);
  t.equal(slow.engine.running, 0);
});

t.test('a client that disconnects cancels its request', async (t) => {
  const cancelled = server.engine.cancelled;
  const req = request({ port, method: 'POST', path: '/v1/tasks/base/generate', headers: { 'content-type': 'application/json' } });
  req.on('error', () => {});
  req.end(JSON.stringify({ prompt: 'In the beginning', max_tokens: 450, temperature: 1, ignore_eos: true }));
  for (let i = 0; i < 400 && server.engine.running === 0; i++) await sleep(5);
  t.equal(server.engine.running, 1, 'the request is running');
  req.destroy();
  for (let i = 0; i < 400 && server.engine.cancelled === cancelled; i++) await sleep(5);
  t.equal(server.engine.cancelled, cancelled + 1, 'the scheduler dropped it as cancelled (it did not run to its end)');
  t.equal(server.engine.running, 0, 'its row was freed');
});

t.test('a worker crash fails the requests it held with 503; later requests succeed', async (t) => {
  const inflight = Array.from({ length: 4 }, (_, i) => generate('kjv-prompt', { prompt: `And the LORD ${i}`, max_tokens: 200, temperature: 1, ignore_eos: true }));
  for (let i = 0; i < 200 && server.engine.running < 4; i++) await sleep(5);
  server.executors[0].simulateCrash();
  const results = await Promise.all(inflight);
  for (const r of results) {
    t.equal(r.statusCode, 503);
    t.equal(r.json().error.code, 'worker_crashed');
  }
  await server.executors[0].ready(); // the fresh worker has created its session
  const after = await generate('pos-prefix', { prompt: 'happily', max_tokens: 3, temperature: 0 });
  t.equal(after.statusCode, 200);
  t.equal(after.json().token_ids.length > 0 || after.json().finish_reason === 'stop', true);
});

t.test('a hung worker: past STEP_TIMEOUT_MS it is terminated, its rows get 503, the next requests succeed', async (t) => {
  const respawns = server.executors[0].respawns;
  const inflight = Array.from({ length: 3 }, (_, i) => generate('base', { prompt: `hung ${i}`, max_tokens: 300, temperature: 1, ignore_eos: true }));
  for (let i = 0; i < 400 && server.engine.running < 3; i++) await sleep(5);
  server.executors[0].simulateHang();
  for (const r of await Promise.all(inflight)) {
    t.equal(r.statusCode, 503);
    t.equal(r.json().error.code, 'worker_crashed');
  }
  t.equal(server.executors[0].respawns, respawns + 1, 'a fresh worker was started');
  t.equal(server.engine.running, 0);
  await server.executors[0].ready();
  const after = await generate('define-prefix', { prompt: 'ocean', max_tokens: 4, temperature: 0, ignore_eos: true });
  t.equal(after.statusCode, 200);
  t.equal(after.json().token_ids.length, 4);
});
