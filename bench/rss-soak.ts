import { writeFileSync } from 'node:fs';
import { memoryBreakdown, percentile, startServerProcess, SUPPORTED, type MemoryBreakdown } from './harness.js';

/**
 * Memory under steady mixed traffic (loopback, bounded): 16 clients send generate (plain and
 * streamed, greedy and sampled), classify, score and multi-prompt completions for SOAK_MINUTES
 * (default 8); the server's RSS is sampled every 15 s, split by kind of mapping (glibc's brk heap,
 * its per-thread arenas, other anonymous mappings, files) so that the growing kind shows. Prints each
 * sample and the growth after warm-up (WARMUP_MINUTES, default 2); SOAK_OUT writes the samples as JSON.
 * The server starts with this process's environment (glibc's defaults unless it sets MALLOC_*, unlike
 * `npm start`, which ships MALLOC_MMAP_THRESHOLD_=131072); allocator settings are compared with e.g.
 *   SOAK_ENV='{"MALLOC_MMAP_THRESHOLD_":"131072"}' SOAK_MINUTES=6 node dist/bench/rss-soak.js
 */
const minutes = Number(process.env.SOAK_MINUTES ?? 8);
const clients = Number(process.env.SOAK_CLIENTS ?? 16);
// SOAK_ENV: extra server settings (JSON); SOAK_MAIN: another build's dist/src/main.js, to compare.
const server = await startServerProcess({ ...(process.env.SOAK_ENV ? JSON.parse(process.env.SOAK_ENV) : {}) }, { main: process.env.SOAK_MAIN });
const until = performance.now() + minutes * 60_000;
const MB = 1024 * 1024;
const warmupS = Number(process.env.WARMUP_MINUTES ?? 2) * 60;
const samples: ({ s: number; heap: number; requests: number } & MemoryBreakdown)[] = [];
let requests = 0;
let failures = 0;
const latencies: number[] = [];

async function post(path: string, body: object): Promise<void> {
  const t0 = performance.now();
  const res = await fetch(server.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await res.text();
  latencies.push(performance.now() - t0);
  requests++;
  if (res.status !== 200) failures++;
}

async function client(i: number): Promise<void> {
  for (let n = 0; performance.now() < until; n++) {
    const task = SUPPORTED[(i + n) % SUPPORTED.length];
    const kind = (i + n) % 6;
    if (kind === 0) await post(`/v1/tasks/${task}/generate`, { prompt: `request ${i} ${n}`, max_tokens: 24, temperature: 0 });
    else if (kind === 1) await post(`/v1/tasks/${task}/generate`, { prompt: `sampled ${n}`, max_tokens: 24, temperature: 0.9, top_p: 0.9, top_k: 50, stream: true });
    else if (kind === 2) await post('/v1/tasks/pos-bitfit/classify', { input: [`word${n}`, 'happily', 'ocean'] });
    else if (kind === 3) await post(`/v1/tasks/${task}/score`, { prompt: `the ${n}`, completion: ' end of it', eos: true });
    else if (kind === 4) await post('/v1/completions', { model: task, prompt: [`a ${n}`, `b ${i}`], max_tokens: 12, stream: n % 2 === 0 });
    else await post('/v1/tasks/base/generate', { prompt: `logprobs ${n}`, max_tokens: 16, logprobs: 5, stop: ['\n'] });
  }
}

const t0 = performance.now();
/** The main thread's V8 heap in use, from /metrics: if RSS grows and this does not, the growth is native. */
async function heapUsed(): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(/^nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1] ?? NaN);
}
const sampler = setInterval(async () => {
  const s = Math.round((performance.now() - t0) / 1000);
  const mem = memoryBreakdown(server.pid);
  samples.push({ s, ...mem, heap: await heapUsed(), requests });
}, 15_000);
await Promise.all(Array.from({ length: clients }, (_, i) => client(i)));
clearInterval(sampler);
await server.stop();

const warm = samples.filter((x) => x.s >= warmupS);
const base = warm[0]?.rss ?? NaN;
const mib = (b: number) => (b / MB).toFixed(0);
console.log('| s | RSS MiB | brk heap | arenas (n) | other anon (n) | files | THP | main JS heap | requests |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const x of samples) console.log(`| ${x.s} | ${mib(x.rss)} | ${mib(x.brkHeap)} | ${mib(x.arenas)} (${x.arenaCount}) | ${mib(x.otherAnon)} (${x.otherAnonCount}) | ${mib(x.file)} | ${mib(x.anonHugePages)} | ${mib(x.heap)} | ${x.requests} |`);
const peak = Math.max(...samples.map((x) => x.rss));
const last = samples.at(-1);
const end = last?.rss ?? NaN;
const grew = (k: keyof MemoryBreakdown) => (last && warm[0] ? `${k} ${((last[k] - warm[0][k]) / MB).toFixed(0)}` : '');
console.log(`\nsettings ${process.env.SOAK_ENV ?? '(defaults)'}: ${requests} requests, ${failures} not 200, p50 ${percentile(latencies, 50).toFixed(0)} ms; RSS start ${mib(samples[0].rss)} MiB, after warm-up ${mib(base)} MiB, peak ${mib(peak)} MiB, end ${mib(end)} MiB (${(((end - base) / base) * 100).toFixed(1)} % after warm-up); MiB grown after warm-up: ${(['brkHeap', 'arenas', 'otherAnon', 'file'] as const).map(grew).join(', ')}`);
if (process.env.SOAK_OUT) writeFileSync(process.env.SOAK_OUT, JSON.stringify({ env: process.env.SOAK_ENV ?? null, minutes, clients, requests, failures, samples }, null, 2));
