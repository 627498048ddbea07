/**
 * Hot swap under load: how long an upload takes to be served (same replica, and across replicas
 * through Redis), what a swap every 100 ms costs a steady mixed workload, and the RSS of a server
 * with 10,000 registered adapters.
 *   npm run bench:hot-swap [-- --swaps 40 --adapters 10000]
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { machineInfo, percentile, rssBytes, startServerProcess, SUPPORTED, writeAdapters } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    swaps: { type: 'string', default: '40' },
    seconds: { type: 'string', default: '8' },
    adapters: { type: 'string', default: '10000' },
    redis: { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    out: { type: 'string', default: 'bench/results/hot-swap.json' },
  },
});
const work = mkdtempSync(join(tmpdir(), 'bench-swap-'));
const TOKEN = 'bench-admin';
const files = (name: string) => {
  const dir = join('adapters', name);
  const form = new FormData();
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'task.json']) {
    try {
      form.append(f, new Blob([readFileSync(join(dir, f))]), f);
    } catch {
      /* task.json is optional */
    }
  }
  return form;
};
const upload = async (url: string, task: string, source: string) => {
  const res = await fetch(`${url}/v1/adapters/${task}`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` }, body: files(source) });
  if (res.status >= 300) throw new Error(`upload ${res.status}: ${await res.text()}`);
  return ((await res.json()) as { version: string }).version;
};
const generate = async (url: string, task: string, prompt: string) => {
  const res = await fetch(`${url}/v1/tasks/${task}/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt, raw: true, max_tokens: 16, temperature: 0, ignore_eos: true }) });
  return { status: res.status, body: (await res.json()) as { adapter_version?: string } };
};

/** Upload, then poll `reader` until it serves the new version: the latency a user sees. */
async function swapLatencies(writer: string, reader: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < Number(args.swaps); i++) {
    const t0 = performance.now();
    const version = await upload(writer, 'swapped', i % 2 ? 'kjv-prompt' : 'fortune-ptuning');
    while ((await generate(reader, 'swapped', 'x')).body.adapter_version !== version) {
      if (performance.now() - t0 > 5000) throw new Error('swap not served within 5 s');
    }
    out.push(performance.now() - t0);
  }
  return out;
}

/** Steady mixed traffic for `seconds`, optionally swapping an adapter in use every 100 ms. */
async function steady(url: string, swap: boolean): Promise<{ tokPerS: number; failed: number }> {
  let running = true;
  let tokens = 0;
  let failed = 0;
  const tasks = [...SUPPORTED, 'swapped'];
  const clients = Array.from({ length: 16 }, async (_, c) => {
    for (let i = c; running; i += 16) {
      const r = await generate(url, tasks[i % tasks.length], `request ${i}`);
      if (r.status === 200) tokens += 16;
      else failed++;
    }
  });
  const swapper = (async () => {
    for (let i = 0; swap && running; i++) {
      await upload(url, 'swapped', i % 2 ? 'kjv-prompt' : 'fortune-ptuning');
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, Number(args.seconds) * 1000));
  running = false;
  await Promise.all([...clients, swapper]);
  return { tokPerS: tokens / ((performance.now() - t0) / 1000), failed };
}

const dir = join(work, 'adapters');
writeAdapters(dir, 7);
const local = await startServerProcess({ ADAPTERS_DIR: dir, ADMIN_TOKEN: TOKEN });
await upload(local.url, 'swapped', 'kjv-prompt');
const sameReplica = await swapLatencies(local.url, local.url);
const without = await steady(local.url, false);
const withSwaps = await steady(local.url, true);
await local.stop();

let acrossReplicas: number[] = [];
try {
  const env = { REDIS_URL: args.redis!, REDIS_PREFIX: `bench-${process.pid}:`, ADAPTERS_DIR: dir, ADMIN_TOKEN: TOKEN };
  const a = await startServerProcess(env);
  const b = await startServerProcess(env);
  await upload(a.url, 'swapped', 'kjv-prompt');
  acrossReplicas = await swapLatencies(a.url, b.url);
  await Promise.all([a.stop(), b.stop()]);
} catch (e) {
  console.error(`skipping the Redis measurement: ${(e as Error).message}`);
}

// 10,000 registered adapters: copies of the demo ones under distinct task ids.
const many = join(work, 'many');
mkdirSync(many);
const n = Number(args.adapters);
for (let i = 0; i < n; i++) cpSync(join('adapters', SUPPORTED[i % SUPPORTED.length]), join(many, `task-${i}`), { recursive: true });
const t0 = performance.now();
const big = await startServerProcess({ ADAPTERS_DIR: many });
const startSeconds = (performance.now() - t0) / 1000;
const rssMany = rssBytes(big.pid);
const probe = await generate(big.url, `task-${n - 1}`, 'x');
await big.stop();

const f = (x: number, d = 1) => x.toFixed(d);
console.log(`\nhot swap: ${args.swaps} swaps per measurement; ${machineInfo().cpu}, ${machineInfo().cores} cores\n`);
printTable(['upload → served', 'p50 ms', 'p99 ms'], [
  ['same replica (filesystem store)', f(percentile(sameReplica, 50)), f(percentile(sameReplica, 99))],
  ...(acrossReplicas.length ? [['other replica (redis pub/sub)', f(percentile(acrossReplicas, 50)), f(percentile(acrossReplicas, 99))]] : []),
]);
console.log();
printTable(['steady mixed workload (16 clients, 8 tasks)', 'gen tok/s', 'failed requests'], [
  ['no swaps', f(without.tokPerS, 0), without.failed],
  ['a swap every 100 ms', f(withSwaps.tokPerS, 0), withSwaps.failed],
  ['ratio (with / without)', f(withSwaps.tokPerS / without.tokPerS, 2), ''],
]);
console.log(`\n${n} registered adapters: RSS ${(rssMany / 2 ** 20).toFixed(1)} MiB after start (${f(startSeconds)} s to validate and start; decoded adapters beyond ADAPTER_CACHE_BYTES are evicted); last task served: ${probe.status}`);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ machine: machineInfo(), sameReplica, acrossReplicas, without, withSwaps, adapters: n, rssMany, startSeconds }, null, 2) + '\n');
rmSync(work, { recursive: true, force: true });
