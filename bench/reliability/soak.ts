/**
 * Soak: a server process under steady mixed traffic (generate, streamed generate, classify, score,
 * completions over every demo task) for SOAK_MINUTES, its RSS sampled every 5 s. Prints RSS at
 * start (after a warm-up), peak and end, and the growth after warm-up; writes bench/results/soak.json.
 *   node dist/bench/reliability/soak.js            # SOAK_MINUTES=30 SOAK_CLIENTS=16 WARMUP_MINUTES=2
 */
import { writeFileSync } from 'node:fs';
import { machineInfo, rssBytes, startServerProcess, SUPPORTED } from '../harness.js';

const minutes = Number(process.env.SOAK_MINUTES ?? 30);
const clients = Number(process.env.SOAK_CLIENTS ?? 16);
const warmupMinutes = Number(process.env.WARMUP_MINUTES ?? Math.min(2, minutes / 5));
const server = await startServerProcess({ ADMIN_TOKEN: 'soak' }); // info level: its 'listening' line is how the harness finds the port
const url = server.url;
const json = { 'content-type': 'application/json' };

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
const samples: { t: number; rss: number }[] = [];
const t0 = Date.now();
const end = t0 + minutes * 60_000;
const sampler = setInterval(() => samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes(server.pid) }), 5000);
samples.push({ t: 0, rss: rssBytes(server.pid) });
let done = 0;
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
samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes(server.pid) });
await server.stop();

const mb = (b: number) => b / 2 ** 20;
const afterWarmup = samples.filter((s) => s.t >= warmupMinutes * 60);
const start = afterWarmup[0] ?? samples[0];
const peak = samples.reduce((m, s) => (s.rss > m.rss ? s : m), samples[0]);
const last = samples[samples.length - 1];
const growth = (last.rss - start.rss) / start.rss;
const result = {
  machine: machineInfo(),
  minutes,
  clients,
  warmupMinutes,
  requests: done,
  statuses: Object.fromEntries(statuses),
  rssMiB: { initial: mb(samples[0].rss), start: mb(start.rss), peak: mb(peak.rss), peakAtS: peak.t, end: mb(last.rss) },
  growthAfterWarmup: growth,
  samples: samples.map((s) => ({ t: s.t, rssMiB: +mb(s.rss).toFixed(1) })),
};
writeFileSync(process.env.SOAK_OUT ?? 'bench/results/soak.json', JSON.stringify(result, null, 2));
console.log(`| minutes | clients | requests | statuses | RSS start (after ${warmupMinutes} min) | peak | end | growth |`);
console.log('| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |');
console.log(
  `| ${minutes} | ${clients} | ${done} | ${[...statuses].map(([s, n]) => `${s}: ${n}`).join(', ')} | ${mb(start.rss).toFixed(0)} MiB | ${mb(peak.rss).toFixed(0)} MiB | ${mb(last.rss).toFixed(0)} MiB | ${(growth * 100).toFixed(1)} % |`,
);
