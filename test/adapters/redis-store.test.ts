import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import t from 'tap';
import { RedisStore } from '../../src/adapters/redis-store.js';
import { encodeSafetensors, parseSafetensors } from '../../src/model/safetensors.js';
import { adapterFiles, multipart, reference } from '../helpers.js';
import { startServerProcess, TestRedis } from '../redis-process.js';

const redis = new TestRedis(16379 + Math.floor(Math.random() * 1000));
await redis.start();
const prefix = `sps-test-${process.pid}:`;
// No periodic reconcile: the ordering test below must pass on ordering alone.
const env = { REDIS_URL: redis.url, REDIS_PREFIX: prefix, ADMIN_TOKEN: 'redis-admin', RECONCILE_INTERVAL_MS: '0', REDIS_COMMAND_TIMEOUT_MS: '1000' };
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
  // The same files again: the same version, uploaded later; the other replica lists the new time (no reconcile runs here).
  const again = (await (await upload(a.url, 'shared-task', 'fortune-ptuning')).json()) as { version: string; created_at: string };
  t.equal(again.version, v2);
  const createdAt = async () => ((await (await fetch(`${b.url}/v1/adapters/shared-task`, { headers: auth })).json()) as { created_at: string }).created_at;
  const t2 = performance.now();
  while ((await createdAt()) !== again.created_at && performance.now() - t2 < 3000) await new Promise((r) => setTimeout(r, 20));
  t.equal(await createdAt(), again.created_at, "the other replica lists the upload's time");
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

async function listOf(url: string): Promise<string[]> {
  const res = await fetch(`${url}/v1/adapters`, { headers: auth });
  return ((await res.json()) as { adapters: { task: string }[] }).adapters.map((a) => a.task);
}

t.test('upload then delete in a tight loop on one replica: the other never keeps a deleted task', async (t) => {
  const tasks = Array.from({ length: 50 }, (_, i) => `race-${i}`);
  for (const task of tasks) {
    t.equal((await upload(a.url, task, 'pos-prompt')).status, 201);
    const del = await fetch(`${a.url}/v1/adapters/${task}`, { method: 'DELETE', headers: auth });
    t.equal(del.status, 204);
  }
  // Announcements are in flight for a few ms; no resync will happen (RECONCILE_INTERVAL_MS=0).
  const t0 = performance.now();
  let left = (await listOf(b.url)).filter((x) => x.startsWith('race-'));
  while (left.length > 0 && performance.now() - t0 < 2000) {
    await new Promise((r) => setTimeout(r, 50));
    left = (await listOf(b.url)).filter((x) => x.startsWith('race-'));
  }
  t.same(left, [], 'replica B lists none of the deleted tasks');
  for (const task of tasks.slice(0, 5)) t.equal((await generate(b.url, task, 'love')).status, 404, `${task} is not served by B`);
});

t.test('a seeded adapter an admin deleted stays deleted when another replica starts (ADAPTERS_DIR seeds a new registry only)', async (t) => {
  const del = await fetch(`${a.url}/v1/adapters/define-prefix`, { method: 'DELETE', headers: auth });
  t.equal(del.status, 204);
  const c = await startServerProcess(env);
  t.teardown(() => c.stop());
  for (const url of [a.url, b.url, c.url]) {
    t.notOk((await listOf(url)).includes('define-prefix'), 'not listed');
    t.equal((await generate(url, 'define-prefix', 'love')).status, 404, 'not served');
  }
  t.ok((await listOf(c.url)).includes('pos-prefix'), 'the new replica holds the rest of the registry');
  // Put it back for the tests below (the re-seed test expects the whole folder).
  t.equal((await upload(a.url, 'define-prefix', 'define-prefix')).status, 201);
});

t.test('a Redis that stops answering (paused): writes get 503 within the command timeout, /readyz says degraded until it answers again, serving goes on', async (t) => {
  const readyz = async () => ((await (await fetch(`${a.url}/readyz`)).json()) as { degraded: boolean }).degraded;
  redis.pause();
  let ms = 0;
  try {
    const t0 = performance.now();
    const res = await upload(a.url, 'paused-task', 'pos-prompt');
    ms = performance.now() - t0;
    t.equal(res.status, 503, 'the write fails instead of hanging');
    t.equal(((await res.json()) as { error: { code: string } }).error.code, 'store_unavailable');
    t.equal(await readyz(), true, '/readyz reports the degraded state');
    const r = await generate(a.url, 'pos-prefix', 'happily ->');
    t.equal(r.status, 200, 'inference goes on from memory');
  } finally {
    redis.resume();
  }
  t.ok(ms < 4000, `answered after ${ms.toFixed(0)} ms (REDIS_COMMAND_TIMEOUT_MS 1000)`);
  const t0 = performance.now();
  while ((await readyz()) && performance.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 100));
  t.equal(await readyz(), false, 'no longer degraded once Redis answers a ping');
  // The write was sent before it timed out, so Redis may apply it on waking (a 503 on a write means
  // "unknown": retry it). Either way the replicas agree.
  const has = async (url: string) => (await listOf(url)).includes('paused-task');
  const t1 = performance.now();
  while ((await has(a.url)) !== (await has(b.url)) && performance.now() - t1 < 3000) await new Promise((r) => setTimeout(r, 50));
  t.equal(await has(a.url), await has(b.url), 'both replicas agree on the write that timed out');
  await fetch(`${a.url}/v1/adapters/paused-task`, { method: 'DELETE', headers: auth });
});

t.test('redis restarted empty under traffic: replicas keep serving and re-seed the index', async (t) => {
  let traffic = true;
  const failures: string[] = [];
  let served = 0;
  // pos-bitfit comes from ADAPTERS_DIR, shared-task was uploaded (it exists in no folder).
  const load = (async () => {
    while (traffic) {
      for (const [url, task] of [[a.url, 'pos-bitfit'], [b.url, 'shared-task'], [b.url, 'pos-prefix'], [a.url, 'shared-task']]) {
        const r = await generate(url, task, 'love');
        if (r.status === 200) served++;
        else failures.push(`${task}: ${r.status}`);
      }
    }
  })();
  await new Promise((r) => setTimeout(r, 200));
  await redis.stop();
  for (const f of readdirSync(redis.dir)) rmSync(join(redis.dir, f), { recursive: true, force: true });
  await redis.start();
  const resets = async (url: string) => Number(/^sps_adapter_store_resets_total (\d+)/m.exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? 0);
  const t0 = performance.now();
  while ((await resets(a.url)) < 1 || (await resets(b.url)) < 1) {
    if (performance.now() - t0 > 8000) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(await resets(a.url), 1, 'replica A counted the reset');
  t.equal(await resets(b.url), 1, 'replica B counted the reset');
  // The index is re-seeded from ADAPTERS_DIR: a third replica started now sees the demo adapters.
  const c = await startServerProcess(env);
  t.teardown(() => c.stop());
  t.equal((await generate(c.url, 'pos-prefix', 'happily ->')).status, 200, 'a new replica serves a re-seeded adapter');
  t.equal((await generate(c.url, 'shared-task', 'love')).status, 404, 'an upload that no folder holds is gone from the store');
  traffic = false;
  await load;
  t.same(failures, [], `no failed inference (${served} served)`);
  t.ok((await listOf(a.url)).includes('shared-task'), 'replica A still holds the uploaded task');
  // Writes work again, and reach the other replicas.
  t.equal((await upload(b.url, 'after-reset', 'kjv-prompt')).status, 201);
  let r = await generate(a.url, 'after-reset', 'love');
  for (let i = 0; r.status !== 200 && i < 30; i++) r = await generate(a.url, 'after-reset', 'love');
  t.equal(r.status, 200);
});

t.test('a LoRA of several MiB is stored in chunks of a MiB, and the other replica serves it as the reference', async (t) => {
  // pos-lora at rank 64, zero-padded, alpha scaled with it: the same adapter (B·A unchanged), 2.8 MiB of weights.
  const source = adapterFiles('pos-lora');
  const config = JSON.parse(Buffer.from(source['adapter_config.json']).toString('utf8'));
  const padded: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, w] of parseSafetensors(Buffer.from(source['adapter_model.safetensors'])).tensors) {
    const [rows, cols] = w.shape;
    const isA = name.includes('lora_A'); // [r, in]: rows grow; lora_B [out, r]: columns grow
    const shape = isA ? [64, cols] : [rows, 64];
    const data = new Float32Array(shape[0] * shape[1]);
    for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) data[i * shape[1] + j] = w.data[i * cols + j];
    padded[name] = { shape, data };
  }
  const files = { ...source, 'adapter_config.json': Buffer.from(JSON.stringify({ ...config, r: 64, lora_alpha: (config.lora_alpha * 64) / config.r })), 'adapter_model.safetensors': Buffer.from(encodeSafetensors(padded)) };
  const body = multipart(files);
  const res = await fetch(`${a.url}/v1/adapters/big-lora`, { method: 'PUT', headers: { ...body.headers, ...auth }, body: new Uint8Array(body.payload) });
  t.equal(res.status, 201, await res.clone().text());
  const client = new Redis(redis.url);
  t.teardown(() => client.disconnect());
  const fields = await client.hkeys(`${prefix}files:big-lora`);
  t.same(fields.filter((f) => f.startsWith('weights')).sort(), ['weights.0', 'weights.1', 'weights.2', 'weights.chunks'], 'three chunks and their count');
  const c = reference.cases.filter((x) => x.adapter === 'pos-lora').sort((x, y) => y.greedy.length - x.greedy.length)[0];
  const t0 = performance.now();
  let r = await generate(b.url, 'big-lora', c.text);
  while (r.status !== 200 && performance.now() - t0 < 5000) r = await generate(b.url, 'big-lora', c.text);
  t.equal(r.status, 200);
  t.same(r.body.token_ids, greedyOf('pos-lora', c.text), `the other replica's greedy tokens are pos-lora's (${c.text})`);
  t.same((await generate(a.url, 'big-lora', c.text)).body.token_ids, r.body.token_ids);
});

t.test('a save stages its files under a key of its own: none is left after it, and staged files the store lost in part fail the save and change nothing', async (t) => {
  const storePrefix = `sps-test-store-${process.pid}:`;
  const store = new RedisStore(redis.url, storePrefix, pino({ level: 'silent' }));
  await store.connect();
  const client = new Redis(redis.url);
  t.teardown(async () => {
    await store.close();
    const keys = await client.keys(`${storePrefix}*`);
    if (keys.length) await client.del(...keys);
    client.disconnect();
  });
  const files = (source: string) => {
    const f = adapterFiles(source);
    return { config: Buffer.from(f['adapter_config.json']), weights: Buffer.from(f['adapter_model.safetensors']) };
  };
  const meta = (version: string) => ({ task: 'staged', version, peftType: 'PROMPT_TUNING', kind: 'prompt', bytes: 1, createdAt: new Date(0).toISOString() });
  t.same(await store.save({ meta: meta('v1'), files: files('kjv-prompt') }), { replaced: false });
  t.same(await store.save({ meta: meta('v2'), files: files('pos-prompt') }), { replaced: true });
  t.same(await client.keys(`${storePrefix}staged:*`), [], 'no staged key is left');
  t.equal(await client.ttl(`${storePrefix}files:staged`), -1, "the task's files do not expire");
  // Redis loses the staging key mid-save (a restart, an eviction, a failover), and the next field
  // makes it anew: the save fails, the index and files stay v2's, and no staged key is left.
  const raw = (store as unknown as { client: Redis }).client;
  const hset = raw.hset.bind(raw) as (...a: unknown[]) => Promise<number>;
  raw.hset = (async (...args: unknown[]) => {
    await raw.del(String(args[0])); // lost just before the weights are staged: only they will be there
    return hset(...args);
  }) as unknown as Redis['hset'];
  await t.rejects(store.save({ meta: meta('v3'), files: files('fortune-ptuning') }), { code: 'store_unavailable', message: /staged adapter files are incomplete/ });
  t.same((await store.index()).map((m) => m.version), ['v2'], 'the index still names v2');
  t.ok((await store.load('staged'))!.files.weights.equals(files('pos-prompt').weights), "v2's files are intact");
  t.same(await client.keys(`${storePrefix}staged:*`), [], 'the incomplete staged files were dropped');
});
