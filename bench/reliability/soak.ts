/**
 * Soak: a server process under steady mixed traffic (generate, streamed generate, classify, score,
 * completions over every demo task) for SOAK_MINUTES, its RSS sampled every 5 s. Prints RSS at
 * start (after a warm-up), peak and end, and the growth after warm-up, with RSS split by kind of
 * mapping (glibc's brk heap and per-thread arenas, other anonymous mappings) and the main thread's JS
 * heap; writes bench/results/soak.json.
 *   node dist/bench/reliability/soak.js            # SOAK_MINUTES=30 SOAK_CLIENTS=16 WARMUP_MINUTES=2
 * The server gets the allocator setting that `npm start`, the Docker image and the Kubernetes manifest
 * ship (MALLOC_MMAP_THRESHOLD_, see README "Reliability"); SOAK_ENV='{"MALLOC_MMAP_THRESHOLD_":""}'
 * (JSON, merged into the server's environment) measures glibc's default, or any other setting.
 */
import { writeFileSync } from 'node:fs';
import { machineInfo, median, memoryBreakdown, startServerProcess, SUPPORTED, type MemoryBreakdown } from '../harness.js';

const minutes = Number(process.env.SOAK_MINUTES ?? 30);
const clients = Number(process.env.SOAK_CLIENTS ?? 16);
const warmupMinutes = Number(process.env.WARMUP_MINUTES ?? Math.min(2, minutes / 5));
/** What `npm start` sets (package.json); an empty value leaves glibc's default. */
const SHIPPED = { MALLOC_MMAP_THRESHOLD_: process.env.MALLOC_MMAP_THRESHOLD_ ?? '131072' };
const settings: Record<string, string> = { ...SHIPPED, ...(process.env.SOAK_ENV ? JSON.parse(process.env.SOAK_ENV) : {}) };
for (const [k, v] of Object.entries(settings)) if (v === '') delete settings[k];
// SOAK_MAIN: another build's dist/src/main.js (a variant to compare; its models and adapters are this checkout's).
const server = await startServerProcess({ ADMIN_TOKEN: 'soak', ...settings }, { main: process.env.SOAK_MAIN || undefined }); // info level: its 'listening' line is how the harness finds the port
const url = server.url;
const json = { 'content-type': 'application/json' };
const mb = (b: number) => b / 2 ** 20;

const requests: (() => Promise<Response>)[] = [
  () => fetch(`${url}/v1/tasks/${pick(SUPPORTED)}/generate`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: words(), max_tokens: 24, temperature: 0.8, seed: rnd(1e6) }) }),
  () => fetch(`${url}/v1/tasks/${pick(SUPPORTED)}/generate`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: words(), max_tokens: 16, stream: true }) }),
  () => fetch(`${url}/v1/tasks/pos-bitfit/classify`, { method: 'POST', headers: json, body: JSON.stringify({ input: Array.from({ length: 8 }, () => words()) }) }),
  () => fetch(`${url}/v1/tasks/${pick(SUPPORTED)}/score`, { method: 'POST', headers: json, body: JSON.stringify({ prompt: words(), completion: ' ' + words() }) }),
  () => fetch(`${url}/v1/completions`, { method: 'POST', headers: json, body: JSON.stringify({ model: pick(SUPPORTED), prompt: [words(), words()], max_tokens: 12 }) }),
];
function rnd(n: number) {
  return Math.floor(Math.random() * n);
}
function pick<T>(xs: T[]): T {
  return xs[rnd(xs.length)];
}
const VOCAB = 'the of and to in a is that for it as was with be by on not he i this are or his from at which but have an they you were her she there been one all we their has would when if so no will more'.split(' ');
function words() {
  return Array.from({ length: 1 + rnd(30) }, () => pick(VOCAB)).join(' ');
}

const statuses = new Map<number, number>();
type Sample = { t: number; heap: number; requests: number } & MemoryBreakdown;
const samples: Sample[] = [];
const t0 = Date.now();
const end = t0 + minutes * 60_000;
/** The main thread's V8 heap in use, from /metrics: if RSS grows and this does not, the growth is native. */
async function heapUsed(): Promise<number> {
  try {
    const text = await (await fetch(`${url}/metrics`)).text();
    return Number(/^nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}
async function sample(): Promise<void> {
  const t = (Date.now() - t0) / 1000;
  const mem = memoryBreakdown(server.pid);
  samples.push({ t, ...mem, heap: await heapUsed(), requests: done });
  const prev = samples.at(-2);
  if (prev && Math.floor(prev.t / 60) < Math.floor(t / 60)) console.error(`${(t / 60).toFixed(1)} min: RSS ${mb(mem.rss).toFixed(0)} MiB (brk ${mb(mem.brkHeap).toFixed(0)}, arenas ${mb(mem.arenas).toFixed(0)}, other anon ${mb(mem.otherAnon).toFixed(0)}), ${done} requests`);
}
let done = 0;
const sampler = setInterval(() => void sample(), Number(process.env.SAMPLE_SECONDS ?? 5) * 1000);
await sample();
await Promise.all(
  Array.from({ length: clients }, async () => {
    while (Date.now() < end) {
      try {
        const res = await pick(requests)();
        await res.arrayBuffer();
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      } catch {
        statuses.set(0, (statuses.get(0) ?? 0) + 1);
      }
      done++;
    }
  }),
);
clearInterval(sampler);
await sample();
await server.stop();

const afterWarmup = samples.filter((s) => s.t >= warmupMinutes * 60);
const start = afterWarmup[0] ?? samples[0];
const peak = samples.reduce((m, s) => (s.rss > m.rss ? s : m), samples[0]);
const last = samples[samples.length - 1];
const growth = (last.rss - start.rss) / start.rss;
// One sample can catch a step's transient buffers (tens of MiB at batch 64): the median RSS of the
// first minute after warm-up against that of the last minute is the steadier measure of creep.
const medianRss = (from: number, to: number) => median(samples.filter((x) => x.t >= from && x.t < to).map((x) => x.rss));
const firstMinute = medianRss(start.t, start.t + 60);
const lastMinute = medianRss(last.t - 60, last.t + 1);
const medianGrowth = (lastMinute - firstMinute) / firstMinute;
const kinds = ['brkHeap', 'arenas', 'otherAnon', 'file'] as const;
const heaps = samples.map((s) => s.heap).filter((h) => Number.isFinite(h));
const result = {
  machine: machineInfo(),
  settings,
  main: process.env.SOAK_MAIN || null,
  minutes,
  clients,
  warmupMinutes,
  requests: done,
  statuses: Object.fromEntries(statuses),
  rssMiB: { initial: mb(samples[0].rss), start: mb(start.rss), peak: mb(peak.rss), peakAtS: peak.t, end: mb(last.rss) },
  growthAfterWarmup: growth,
  minuteMedianRssMiB: { firstAfterWarmup: mb(firstMinute), last: mb(lastMinute) },
  minuteMedianGrowth: medianGrowth,
  grownAfterWarmupMiB: Object.fromEntries(kinds.map((k) => [k, +mb(last[k] - start[k]).toFixed(1)])),
  jsHeapMiB: { min: mb(Math.min(...heaps)), max: mb(Math.max(...heaps)) },
  samples: samples.map((s) => ({ t: s.t, rssMiB: +mb(s.rss).toFixed(1), brkHeapMiB: +mb(s.brkHeap).toFixed(1), arenasMiB: +mb(s.arenas).toFixed(1), arenaCount: s.arenaCount, otherAnonMiB: +mb(s.otherAnon).toFixed(1), jsHeapMiB: +mb(s.heap).toFixed(1), requests: s.requests })),
};
writeFileSync(process.env.SOAK_OUT ?? 'bench/results/soak.json', JSON.stringify(result, null, 2));
// The curve, one line a minute: which kind of memory moves.
console.log('| min | RSS MiB | brk heap | arenas (n) | other anon | JS heap (main) | requests |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
for (let m = 0, i = 0; i < samples.length; m++) {
  const s = samples.find((x) => x.t >= m * 60) ?? samples[samples.length - 1];
  i = samples.indexOf(s) + 1;
  console.log(`| ${(s.t / 60).toFixed(1)} | ${mb(s.rss).toFixed(0)} | ${mb(s.brkHeap).toFixed(0)} | ${mb(s.arenas).toFixed(0)} (${s.arenaCount}) | ${mb(s.otherAnon).toFixed(0)} | ${mb(s.heap).toFixed(0)} | ${s.requests} |`);
  if (s === samples[samples.length - 1]) break;
}
console.log(`\nsettings: ${JSON.stringify(settings)}${process.env.SOAK_MAIN ? `, server ${process.env.SOAK_MAIN}` : ''}\n`);
console.log(`| minutes | clients | requests | statuses | RSS start (after ${warmupMinutes} min) | peak | end | growth | growth, 1-min medians | JS heap (main) |`);
console.log('| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |');
console.log(
  `| ${minutes} | ${clients} | ${done} | ${[...statuses].map(([s, n]) => `${s}: ${n}`).join(', ')} | ${mb(start.rss).toFixed(0)} MiB | ${mb(peak.rss).toFixed(0)} MiB | ${mb(last.rss).toFixed(0)} MiB | ${(growth * 100).toFixed(1)} % | ${mb(firstMinute).toFixed(0)} → ${mb(lastMinute).toFixed(0)} MiB, ${(medianGrowth * 100).toFixed(1)} % | ${mb(Math.min(...heaps)).toFixed(0)}–${mb(Math.max(...heaps)).toFixed(0)} MiB |`,
);
console.log(`MiB grown after warm-up: ${kinds.map((k) => `${k} ${mb(last[k] - start[k]).toFixed(0)}`).join(', ')}`);
