import t from 'tap';
import { adapterFiles, multipart, reference } from '../helpers.js';
import { startServerProcess, TestRedis } from '../redis-process.js';

const redis = new TestRedis(16379 + Math.floor(Math.random() * 1000));
await redis.start();
const prefix = `sps-test-${process.pid}:`;
const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, ADMIN_TOKEN: 'redis-admin' };
const a = await startServerProcess(env);
const b = await startServerProcess(env);
t.teardown(async () => {
  await Promise.all([a.stop(), b.stop()]);
  await redis.stop();
});

const auth = { authorization: 'Bearer redis-admin' };
async function upload(url: string, task: string, source: string) {
  const body = multipart(adapterFiles(source));
  return fetch(`${url}/v1/adapters/${task}`, { method: 'PUT', headers: { ...body.headers, ...auth }, body: new Uint8Array(body.payload) });
}
async function generate(url: string, task: string, prompt: string) {
  const res = await fetch(`${url}/v1/tasks/${task}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, raw: true, max_tokens: 12, temperature: 0 }) });
  return { status: res.status, body: (await res.json()) as { token_ids: number[]; adapter_version: string } };
}
const greedyOf = (adapter: string, text: string) => {
  const c = reference.cases.find((x) => x.adapter === adapter && x.text === text)!;
  return (c.greedy.at(-1) === 0 ? c.greedy.slice(0, -1) : c.greedy).slice(0, 12);
};

t.test('the demo adapters were seeded into redis, and both replicas serve them', async (t) => {
  for (const url of [a.url, b.url]) {
    const r = await generate(url, 'pos-prefix', 'happily ->');
    t.equal(r.status, 200);
    t.same(r.body.token_ids, greedyOf('pos-prefix', 'happily ->'));
  }
});

t.test('an upload on one replica is served by the other within 1 s', async (t) => {
  const res = await upload(a.url, 'shared-task', 'kjv-prompt');
  t.equal(res.status, 201);
  const version = ((await res.json()) as { version: string }).version;
  const t0 = performance.now();
  let r = await generate(b.url, 'shared-task', 'You will');
  while (r.status !== 200 && performance.now() - t0 < 3000) r = await generate(b.url, 'shared-task', 'You will');
  const elapsed = performance.now() - t0;
  t.equal(r.status, 200);
  t.ok(elapsed < 1000, `served by the other replica after ${elapsed.toFixed(0)} ms`);
  t.equal(r.body.adapter_version, version);
  t.same(r.body.token_ids, greedyOf('kjv-prompt', 'You will'));
  // A replacement reaches the other replica too.
  const v2 = ((await (await upload(a.url, 'shared-task', 'fortune-ptuning')).json()) as { version: string }).version;
  const t1 = performance.now();
  while ((await generate(b.url, 'shared-task', 'You will')).body.adapter_version !== v2 && performance.now() - t1 < 3000) await new Promise((r) => setTimeout(r, 20));
  t.ok(performance.now() - t1 < 1000, 'the new version is served within 1 s');
});

t.test('redis stopped and restarted during traffic: no failed inference, writes 503, then resync', async (t) => {
  let traffic = true;
  const failures: string[] = [];
  let served = 0;
  const load = (async () => {
    while (traffic) {
      for (const [url, task] of [[a.url, 'pos-bitfit'], [b.url, 'shared-task']]) {
        const r = await generate(url, task, 'love');
        if (r.status === 200) served++;
        else failures.push(`${task}: ${r.status}`);
      }
    }
  })();
  await new Promise((r) => setTimeout(r, 200));
  await redis.stop();
  await new Promise((r) => setTimeout(r, 300));
  const write = await upload(a.url, 'during-outage', 'kjv-prompt');
  t.equal(write.status, 503, 'admin writes get 503 while redis is away');
  const ready = (await (await fetch(`${a.url}/readyz`)).json()) as { degraded: boolean };
  t.equal(ready.degraded, true, '/readyz reports the degraded state');
  await new Promise((r) => setTimeout(r, 500));
  await redis.start();
  // Both replicas reconnect and resynchronise; an upload made now reaches the other replica.
  const t0 = performance.now();
  let res = await upload(b.url, 'after-outage', 'pos-prompt');
  while (res.status !== 201 && performance.now() - t0 < 5000) {
    await new Promise((r) => setTimeout(r, 100));
    res = await upload(b.url, 'after-outage', 'pos-prompt');
  }
  t.equal(res.status, 201);
  let r = await generate(a.url, 'after-outage', 'love');
  while (r.status !== 200 && performance.now() - t0 < 6000) r = await generate(a.url, 'after-outage', 'love');
  t.equal(r.status, 200, 'the other replica serves an upload made after the restart');
  traffic = false;
  await load;
  t.same(failures, [], `no failed inference (${served} served)`);
  const readyAfter = (await (await fetch(`${a.url}/readyz`)).json()) as { degraded: boolean };
  t.equal(readyAfter.degraded, false);
});
