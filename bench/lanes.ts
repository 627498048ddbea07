/**
 * One client against many: the worker/thread layout and the batching code, side by side, over real
 * HTTP (streamed). Each variant is a server process (its own build and environment); the variants
 * run interleaved in rounds (A B C, B C A, C A B …) at each client count, and the table reports the
 * median and min–max of generated tokens/s and of the median request latency.
 *   node dist/bench/lanes.js [--rounds 3] [--clients 1,32] [--tokens 32] [--per-client 4] [--variants W2T1,W2T2,W1T2,W1T2:1] [--baseline /path/to/other/checkout]
 * `W1T2:1` sets ORT_SPIN too (0 or 1: intra-op threads that sleep or spin while waiting for work).
 * `--baseline` adds the build of another checkout (its dist/src/main.js) with its defaults, e.g.
 * the code before this change, so that old and new are measured in the same run.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { benchPrompts, cpuSeconds, machineInfo, percentile, startServerProcess, streamGenerate, writeAdapters } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    clients: { type: 'string', default: '1,32' },
    tokens: { type: 'string', default: '32' },
    variants: { type: 'string', default: 'W2T1,W2T2,W1T2' },
    baseline: { type: 'string' },
    /** Requests per client in a run (at least 16 requests in all). */
    'per-client': { type: 'string', default: '4' },
    fixtures: { type: 'string', default: 'test/fixtures' },
    out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'lanes.json') },
  },
});
const ROUNDS = Number(args.rounds);
const TOKENS = Number(args.tokens);
const CLIENTS = args.clients!.split(',').map(Number);

interface Variant {
  name: string;
  env: Record<string, string>;
  main?: string;
  cwd?: string;
}

/** `W<workers>T<threads>[:<spin>]`: WORKERS, INTRA_OP_THREADS and ORT_SPIN (0 or 1) of this build. */
const variants: Variant[] = args.variants!.split(',').map((v) => {
  const m = /^W(\d+)T(\d+)(?::(0|1))?$/.exec(v);
  if (!m) throw new Error(`variant ${v} is not W<workers>T<threads>[:0|1]`);
  const spin: Record<string, string> = m[3] ? { ORT_SPIN: m[3] } : {};
  return { name: `this build, WORKERS=${m[1]} INTRA_OP_THREADS=${m[2]}${m[3] ? ` ORT_SPIN=${m[3]}` : ''}`, env: { WORKERS: m[1], INTRA_OP_THREADS: m[2], ...spin } };
});
if (args.baseline) {
  const dir = resolve(args.baseline);
  variants.unshift({ name: 'baseline build, its defaults', env: {}, main: join(dir, 'dist/src/main.js'), cwd: dir });
}

const work = mkdtempSync(join(tmpdir(), 'bench-lanes-'));
const tasks = writeAdapters(join(work, 'tasks'), 8);
const MODEL_DIR = resolve('models/demo-gpt2');
const CACHE_DIR = resolve('.cache');

/** Requests per run: enough for a few seconds at each client count. */
const requestsFor = (clients: number) => Math.max(16, clients * Number(args['per-client']));

interface Sample {
  tokPerS: number;
  p50: number;
  ttft: number;
  /** CPU time of the server process over the run, in cores: what spinning threads cost. */
  serverCores: number;
}

async function run(v: Variant, clients: number): Promise<Sample> {
  const prompts = benchPrompts(args.fixtures!, requestsFor(clients));
  const server = await startServerProcess({ ADAPTERS_DIR: join(work, 'tasks'), MODEL_DIR, CACHE_DIR, MAX_QUEUE: '4096', ...v.env }, { main: v.main, cwd: v.cwd });
  try {
    const body = (i: number) => ({ prompt: prompts[i], raw: true, max_tokens: TOKENS, temperature: 0, ignore_eos: true });
    await Promise.all(tasks.slice(0, 4).map((t, i) => streamGenerate(server.url, t, body(i)))); // warm-up
    const results: { latency: number; ttft: number; tokens: number }[] = [];
    let next = 0;
    const t0 = performance.now();
    const cpu0 = cpuSeconds(server.pid);
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (next < prompts.length) {
          const i = next++;
          results.push(await streamGenerate(server.url, tasks[i % tasks.length], body(i)));
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const serverCores = (cpuSeconds(server.pid) - cpu0) / seconds;
    return {
      serverCores,
      tokPerS: results.reduce((s, r) => s + r.tokens, 0) / seconds,
      p50: percentile(results.map((r) => r.latency), 50),
      ttft: percentile(results.map((r) => r.ttft), 50),
    };
  } finally {
    await server.stop();
  }
}

const samples = new Map<string, Sample[]>();
for (let r = 0; r < ROUNDS; r++) {
  for (const clients of CLIENTS) {
    // Each round starts at the next variant, so that no variant always runs first or last.
    for (let k = 0; k < variants.length; k++) {
      const v = variants[(k + r) % variants.length];
      const s = await run(v, clients);
      const key = `${v.name}\n${clients}`;
      samples.set(key, [...(samples.get(key) ?? []), s]);
      console.error(`round ${r + 1}, ${clients} clients, ${v.name}: ${s.tokPerS.toFixed(0)} tok/s, p50 ${s.p50.toFixed(0)} ms`);
    }
  }
}
rmSync(work, { recursive: true, force: true });

const med = (xs: number[]) => percentile(xs, 50);
const span = (xs: number[], d = 0) => `${med(xs).toFixed(d)} (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;
const info = machineInfo();
console.log(`\nlanes and threads: ${TOKENS} greedy tokens per request, 8 tasks, ${ROUNDS} interleaved rounds, median (min–max); ${info.cpu}, ${info.cores} cores\n`);
printTable(
  ['variant', 'clients', 'gen tok/s', 'p50 latency ms', 'TTFT p50 ms', 'server cores'],
  CLIENTS.flatMap((c) =>
    variants.map((v) => {
      const xs = samples.get(`${v.name}\n${c}`)!;
      return [v.name, c, span(xs.map((x) => x.tokPerS)), span(xs.map((x) => x.p50)), span(xs.map((x) => x.ttft), 1), med(xs.map((x) => x.serverCores)).toFixed(2)];
    }),
  ),
);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ ...info, rounds: ROUNDS, tokens: TOKENS, runs: Object.fromEntries(samples) }, null, 2));
