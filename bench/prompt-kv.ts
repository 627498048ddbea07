/**
 * Time to first token of a prompt-tuning request with 20 and 100 virtual tokens, with the soft-prompt
 * KV cache on and off (PROMPT_KV_CACHE=off: the soft prompt is prefilled with every request), for the
 * first request of an adapter version (a miss: the KV is computed then) and the later ones (hits).
 * Two in-process servers (one worker each) on the demo model; every round uploads a fresh random
 * soft prompt of each size (a new version: its first request is a miss again), and the variants run
 * interleaved in each round.
 * A second table times the same prefill steps inside one in-process StepRunner (session.run and
 * the whole step), without HTTP, tokenizer and scheduling: less noise on a loaded machine.
 *   npm run build && node dist/bench/prompt-kv.js [--rounds 5 --later 5]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { FeedContext } from '../src/executor/model-constants.js';
import { openSessions } from '../src/executor/sessions.js';
import { StepRunner } from '../src/executor/step-runner.js';
import { loadBaseModel } from '../src/model/base-model.js';
import type { AdapterTensors, Sampling } from '../src/protocol.js';
import { encodeSafetensors } from '../src/model/safetensors.js';
import { createServer, type Server } from '../src/server.js';
import { machineInfo, streamGenerate } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    later: { type: 'string', default: '5' },
    sizes: { type: 'string', default: '20,100' },
  },
});
const ROUNDS = Number(args.rounds);
const LATER = Number(args.later);
const SIZES = args.sizes!.split(',').map(Number);
const TOKEN = 'bench-admin';
const PROMPT = 'And the LORD said unto Moses';

async function start(cache: boolean): Promise<{ server: Server; url: string }> {
  const config = loadConfig({ ...process.env, PROMPT_KV_CACHE: cache ? 'on' : 'off', ADAPTERS_DIR: mkdtempSync(join(tmpdir(), 'bench-pkv-')), ADMIN_TOKEN: TOKEN, WORKERS: '1', LOG_LEVEL: 'warn' });
  const server = await createServer(config, pino({ level: 'warn' }));
  const url = await server.app.listen({ host: '127.0.0.1', port: 0 });
  return { server, url };
}

function randomRows(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n * 256 }, () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return 0.2 * (s / 2 ** 31 - 0.5);
  });
}

/** A prompt-tuning adapter with a random [n, 256] soft prompt (seeded: both servers get the same one). */
function softPrompt(n: number, seed: number): FormData {
  const data = randomRows(n, seed);
  const config = { peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: n, token_dim: 256, num_attention_heads: 4, num_layers: 4, num_transformer_submodules: 1 };
  const form = new FormData();
  form.append('adapter_config.json', new Blob([JSON.stringify(config)]), 'adapter_config.json');
  form.append('adapter_model.safetensors', new Blob([Buffer.from(encodeSafetensors({ prompt_embeddings: { shape: [n, 256], data } }))]), 'adapter_model.safetensors');
  return form;
}

async function upload(url: string, task: string, form: FormData): Promise<void> {
  const res = await fetch(`${url}/v1/adapters/${task}`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` }, body: form });
  if (res.status >= 300) throw new Error(`upload ${task}: ${res.status} ${await res.text()}`);
}

const ttft = async (url: string, task: string) => (await streamGenerate(url, task, { prompt: PROMPT, raw: true, max_tokens: 1, temperature: 0 })).ttft;

async function scrapeCounter(url: string): Promise<{ hit: number; miss: number }> {
  const body = await (await fetch(`${url}/metrics`)).text();
  const read = (r: string) => Number(new RegExp(`^sps_prompt_kv_cache_total\\{result="${r}"\\} (\\S+)$`, 'm').exec(body)?.[1] ?? 0);
  return { hit: read('hit'), miss: read('miss') };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (xs: number[]) => `${median(xs).toFixed(1)} (${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)})`;

const servers = { on: await start(true), off: await start(false) };
// n = 0: the base model (no adapter), the floor a cached soft prompt should approach.
const variants = [0, ...SIZES].flatMap((n) => (['on', 'off'] as const).filter((c) => n > 0 || c === 'on').map((cache) => ({ n, cache, first: [] as number[], later: [] as number[] })));
const task = (n: number) => (n === 0 ? 'base' : `soft-${n}`);
try {
  // Warm-up: the graph's first runs at each shape are slower than the rest.
  for (const v of variants) {
    const { url } = servers[v.cache];
    if (v.n > 0) await upload(url, task(v.n), softPrompt(v.n, 1));
    for (let i = 0; i < 3; i++) await ttft(url, task(v.n));
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of variants) {
      const { url } = servers[v.cache];
      if (v.n > 0) await upload(url, task(v.n), softPrompt(v.n, 1000 + round)); // a new version: its first request misses
      v.first.push(await ttft(url, task(v.n)));
      const later: number[] = [];
      for (let i = 0; i < LATER; i++) later.push(await ttft(url, task(v.n)));
      v.later.push(median(later));
    }
  }
  console.log(JSON.stringify(machineInfo()));
  console.log(`\nTime to first token (ms) of a prompt-tuning request (prompt ${JSON.stringify(PROMPT)}, max_tokens 1, streamed), ${ROUNDS} rounds interleaved; "later": each round's median of ${LATER} requests after the first. Median (min–max) over rounds.\n`);
  printTable(
    ['virtual tokens', 'prompt KV cache', 'first request of a version', 'later requests'],
    variants.map((v) => (v.n === 0 ? ['0 (base model)', '–', fmt(v.first), fmt(v.later)] : [v.n, v.cache, fmt(v.first), fmt(v.later)])),
  );
  const later = (n: number, cache: string) => median(variants.find((v) => v.n === n && v.cache === cache)!.later);
  const [lo, hi] = [Math.min(...SIZES), Math.max(...SIZES)];
  console.log(`\nlater requests, ${hi} vs ${lo} virtual tokens: cache on ${(later(hi, 'on') / later(lo, 'on')).toFixed(2)}×, cache off ${(later(hi, 'off') / later(lo, 'off')).toFixed(2)}×`);
  console.log(`cache counters: on ${JSON.stringify(await scrapeCounter(servers.on.url))}, off ${JSON.stringify(await scrapeCounter(servers.off.url))}`);
} finally {
  await servers.on.server.close();
  await servers.off.server.close();
}

// The same prefill steps in one StepRunner per variant, sharing one session: ms of session.run and of the step.
{
  const model = loadBaseModel('models/demo-gpt2', '.cache');
  const { session, base } = await openSessions(model, { intraOpNumThreads: 1 });
  const ctx = new FeedContext(model.tensors);
  const runners = { on: new StepRunner(session, ctx, { promptKv: true, base }), off: new StepRunner(session, ctx, { promptKv: false, base }) };
  const tokens = model.tokenizer.encodeSync(PROMPT);
  const sampling: Sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };
  let seq = 1;
  const prefill = async (runner: StepRunner, adapter: AdapterTensors, fresh: boolean) => {
    const s = seq++;
    const res = await runner.step({ drop: [], decode: [], prefill: [{ seq: s, adapter: adapter.key, tokens, sampling }], score: [], adapters: fresh ? [adapter] : [], forget: [] });
    await runner.step({ drop: [s], decode: [], prefill: [], score: [], adapters: [], forget: [] });
    return res.ms;
  };
  const rows = SIZES.flatMap((n) => (['on', 'off'] as const).map((cache) => ({ n, cache, first: [] as number[], later: [] as number[], laterTotal: [] as number[] })));
  for (let round = -1; round < ROUNDS; round++) {
    for (const v of rows) {
      const adapter: AdapterTensors = { key: `soft-${v.n}@${round}`, kind: 'prompt', virtualTokens: v.n, embeddings: randomRows(v.n, 1000 + round) };
      const first = await prefill(runners[v.cache], adapter, true);
      const later = [];
      for (let i = 0; i < LATER; i++) later.push(await prefill(runners[v.cache], adapter, false));
      await runners[v.cache].step({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [adapter.key] });
      if (round < 0) continue; // warm-up
      v.first.push(first.run);
      v.later.push(median(later.map((m) => m.run)));
      v.laterTotal.push(median(later.map((m) => m.total)));
    }
  }
  console.log(`\nThe prefill step inside the worker (one StepRunner, 1 intra-op thread, no HTTP), ms, ${ROUNDS} rounds interleaved. Median (min–max) over rounds.\n`);
  printTable(
    ['virtual tokens', 'prompt KV cache', 'first: session.run', 'later: session.run', 'later: whole step'],
    rows.map((v) => [v.n, v.cache, fmt(v.first), fmt(v.later), fmt(v.laterTotal)]),
  );
  const later = (n: number, cache: string) => median(rows.find((v) => v.n === n && v.cache === cache)!.later);
  const [lo, hi] = [Math.min(...SIZES), Math.max(...SIZES)];
  console.log(`\nlater prefill runs, ${hi} vs ${lo} virtual tokens: cache on ${(later(hi, 'on') / later(lo, 'on')).toFixed(2)}×, cache off ${(later(hi, 'off') / later(lo, 'off')).toFixed(2)}×`);
}
