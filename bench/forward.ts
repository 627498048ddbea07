/**
 * Forward-pass throughput of the built graph on this machine's provider, against the ceiling of one
 * large MatMul through the same ONNX Runtime (how much of the arithmetic the model's shapes reach),
 * and the rate at which one M = 1 MatMul streams as many weight bytes as a step reads (how close a
 * step comes to the weight reads that bound it at small batches).
 * Any MODEL_DIR (every supported architecture). `--prepack on,off` compares ONNX Runtime's weight
 * prepacking (faster GEMMs, but a private copy of the weights per session) with sessions that read
 * the memory-mapped external data in place (one copy shared by every worker). `--graphs served,full,host`
 * compares what a worker runs (sampling head in the graph; base graph for rows without BitFit, LoRA
 * or IA3), the full graph alone, and the graph before either (plain logits sampled on the host), and
 * `--sampling greedy,top_p,logprobs` what the rows ask (temperature, top_k also), in interleaved rounds.
 * `--provider cpu|webgpu` picks ONNX Runtime's execution provider (the ceiling runs on it too).
 * `--min-ms` (300): each round repeats its prefill + 32 decode steps until the steps took this long.
 * `--baseline-build DIR` adds the graph set `baseline` and allows `baseline-host`: another checkout's
 * build (its `dist/`, run `npx tsc -p .` there first) — its served graphs or its plain-logits graph,
 * built by its own code into its own `.cache`, and stepped by its own StepRunner and feeds (run by
 * this checkout's onnxruntime-node) — so that
 * two builds' whole worker steps are measured in one process, in interleaved rounds, whatever
 * their graphs' inputs and outputs. Issue 13's batch-1 target is measured against a fixed
 * `baseline-host` this way, since this build's `host` graph shares every change to the body.
 */
import ort from 'onnxruntime-node';
import { cpus } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { loadBaseModel } from '../src/model/base-model.js';
import { architectureOf } from '../src/model/architectures/index.js';
import { GraphBuilder } from '../src/model/onnx-builder.js';
import type { ModelSessions } from '../src/executor/sessions.js';
import type { Sampling, StepPlan } from '../src/protocol.js';
import { median } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    batches: { type: 'string', default: '1,8,32,64' },
    prepack: { type: 'string', default: 'on' },
    graphs: { type: 'string', default: 'served,full,host' },
    sampling: { type: 'string', default: 'greedy,top_p,logprobs' },
    rounds: { type: 'string', default: '3' },
    'min-ms': { type: 'string', default: '300' },
    provider: { type: 'string', default: 'cpu' },
    'baseline-build': { type: 'string' },
    out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'forward.json') },
  },
});
const THREADS = Number(process.env.INTRA_OP_THREADS ?? cpus().length);
const PROMPT = 64;
const DECODE_STEPS = 32;
const ROUNDS = Number(args.rounds);
/** A measurement repeats its workload until its decode steps have taken this long: 32 steps at batch 1 take a few ms, far too short to outlast a noisy machine's jitter. */
const MIN_MS = Number(args['min-ms']);
const options: ort.InferenceSession.SessionOptions = { executionProviders: [args.provider!], graphOptimizationLevel: 'all', intraOpNumThreads: THREADS, interOpNumThreads: 1 };
/** What a step's rows ask of the head: greedy; temperature 1 with top_p 0.9; greedy with `logprobs: 5`. */
const SAMPLINGS: Record<string, Sampling> = {
  greedy: { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 },
  top_p: { temperature: 1, topP: 0.9, topK: 0, seed: 1, logprobs: 0 },
  temperature: { temperature: 1, topP: 1, topK: 0, seed: 1, logprobs: 0 },
  top_k: { temperature: 1, topP: 1, topK: 2048, seed: 1, logprobs: 0 }, // issue 13: no dearer than top_p
  logprobs: { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 5 },
};

/** Best of several runs of a 1024³ MatMul: the most this provider gives one big, friendly GEMM. */
async function matmulCeiling(): Promise<number> {
  const n = 1024;
  const g = new GraphBuilder();
  const a = g.input('a', 'float', [n, n]);
  const w = g.weight('w', [n, n], Float32Array.from({ length: n * n }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
  g.output(g.one('MatMul', [a, w]), 'y', [n, n]);
  const s = await ort.InferenceSession.create(g.serialize(20, 'matmul ceiling'), options);
  return bestRate(s, { a: new ort.Tensor('float32', new Float32Array(n * n).fill(0.5), [n, n]) }, 10, 2 * n ** 3);
}

/** The best of 5 rounds of `reps` runs (after a warm-up), in billions of `perRun` units per second. */
async function bestRate(s: ort.InferenceSession, feeds: Record<string, ort.Tensor>, reps: number, perRun: number): Promise<number> {
  for (let i = 0; i < 3; i++) await s.run(feeds);
  let best = 0;
  for (let round = 0; round < 5; round++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await s.run(feeds);
    best = Math.max(best, (perRun * reps) / ((performance.now() - t0) / 1000) / 1e9);
  }
  await s.release();
  return best;
}

/**
 * Best of several runs of one M = 1 MatMul whose weight matrix has `bytes` (float32, 1024 rows):
 * the rate at which this provider streams weights through a matrix-vector product. A decode step
 * at batch 1 reads every weight once for one token, so its time is bounded below by its weight
 * bytes at this rate. Pseudo-random values: a periodic fill measured faster than real weights.
 */
async function weightReadCeiling(bytes: number): Promise<number> {
  const k = 1024;
  const n = Math.ceil(bytes / 4 / k);
  const g = new GraphBuilder();
  const a = g.input('a', 'float', [1, k]);
  let x = 12345;
  const w = g.weight('w', [k, n], Float32Array.from({ length: k * n }, () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5) / 16));
  g.output(g.one('MatMul', [a, w]), 'y', [1, n]);
  const s = await ort.InferenceSession.create(g.serialize(20, 'weight read ceiling'), options);
  return bestRate(s, { a: new ort.Tensor('float32', new Float32Array(k).fill(0.5), [1, k]) }, 50, 4 * k * n);
}

const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const c = model.config;
const ceiling = await matmulCeiling();
// Every matrix of the layers is one multiply-add per weight and token (embeddings and head aside).
const arch = architectureOf(c.modelType);
let layerWeights = 0;
for (const [name, shape] of arch.weightShapes(c)) if (shape.length === 2 && name !== arch.embedding && !/wpe|lm_head/.test(name)) layerWeights += shape[0] * shape[1];
const matmulFlopsPerToken = 2 * layerWeights;
/** Bytes of weights a decode step reads (the layers' matrices and the LM head), whatever its batch. */
const stepWeightBytes = 4 * (layerWeights + c.hidden * c.vocabSize);
// Measured on at most 256 MiB (a rate: a larger model's step reads at the same one, and one
// initializer of its full size would not fit in memory or in a protobuf).
const readCeilingBytes = Math.min(stepWeightBytes, 256 * 2 ** 20);
const readCeiling = await weightReadCeiling(readCeilingBytes);
const attnFlops = (T: number) => 4 * T * c.heads * c.headDim * c.layers;
const headFlops = 2 * c.hidden * c.vocabSize;
const empty = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });
const spread = (xs: number[], digits = 0) => `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;

/**
 * One measurement: B sequences prefilled with a 64-token prompt into a fresh batch, then 32 decode
 * steps; repeated until the decode steps add up to MIN_MS. Prefill time is the median of the repeats.
 */
async function measure(v: Variant, B: number, sampling: Sampling) {
  const tokens = Array.from({ length: PROMPT }, (_, i) => 100 + ((i * 37) % 3000));
  const prefills: number[] = [];
  let decodeMs = 0;
  let sessionMs = 0;
  let steps = 0;
  while (decodeMs < MIN_MS || steps === 0) {
    const runner = new v.build.StepRunner(v.sessions.session, new v.build.FeedContext(v.build.model.tensors), { padEmpty: args.provider === 'webgpu', base: v.sessions.base });
    const plan = empty();
    plan.prefill = Array.from({ length: B }, (_, i) => ({ seq: i, adapter: null, tokens, sampling: { ...sampling, seed: i + 1 } }));
    const first = await runner.step(plan);
    prefills.push(first.ms.total);
    const last = new Map(first.tokens.map((x) => [x.seq, x.token]));
    for (let step = 1; step <= DECODE_STEPS; step++) {
      const next = empty();
      next.decode = Array.from({ length: B }, (_, i) => ({ seq: i, token: last.get(i)!, step }));
      const r = await runner.step(next);
      decodeMs += r.ms.total;
      sessionMs += r.ms.run;
      steps++;
      for (const x of r.tokens) last.set(x.seq, x.token);
    }
  }
  return { prefillMs: median(prefills), decodeMs, steps, hostMsPerStep: (decodeMs - sessionMs) / steps };
}

type GraphSet = 'served' | 'full' | 'host' | 'baseline' | 'baseline-host';
const graphSets = args.graphs!.split(',') as GraphSet[];
if (args['baseline-build'] && !graphSets.includes('baseline')) graphSets.push('baseline');
if (graphSets.some((s) => s.startsWith('baseline')) && !args['baseline-build']) throw new Error('--graphs baseline and baseline-host need --baseline-build DIR');

/** A build's step code and model: this checkout's, or the one at --baseline-build, from its dist/. */
interface Build {
  StepRunner: typeof import('../src/executor/step-runner.js').StepRunner;
  FeedContext: typeof import('../src/executor/model-constants.js').FeedContext;
  openSessions: typeof import('../src/executor/sessions.js').openSessions;
  model: ReturnType<typeof loadBaseModel>;
  /** Builds the plain-logits graph on first use: only the `host` sets need it. */
  hostGraph: () => string;
}
async function loadBuild(dir: string | null): Promise<Build> {
  const load = (path: string) => import(dir ? pathToFileURL(join(resolve(dir), 'dist', path)).href : new URL(`../${path}`, import.meta.url).href);
  const [runner, constants, sessions, base, checkpoint, cache] = await Promise.all(
    ['src/executor/step-runner.js', 'src/executor/model-constants.js', 'src/executor/sessions.js', 'src/model/base-model.js', 'src/model/checkpoint.js', 'src/model/graph-cache.js'].map(load),
  );
  const cacheDir = dir ? join(resolve(dir), '.cache') : (process.env.CACHE_DIR ?? '.cache');
  const m = dir ? base.loadBaseModel(resolve(model.dir), cacheDir) : model;
  return { StepRunner: runner.StepRunner, FeedContext: constants.FeedContext, openSessions: sessions.openSessions, model: m, hostGraph: () => cache.cachedGraphPath(checkpoint.loadCheckpoint(m.dir), cacheDir, 'host').path };
}
interface Variant {
  build: Build;
  sessions: ModelSessions;
}
const own = await loadBuild(null);
const other = args['baseline-build'] ? await loadBuild(args['baseline-build']) : null;
/** served: as a worker opens them; full: the full graph only; host: the plain-logits full graph (before the sampling head and the base graph); baseline, baseline-host: the same from --baseline-build. */
async function open(set: GraphSet, o: ort.InferenceSession.SessionOptions): Promise<Variant> {
  const build = set.startsWith('baseline') ? other! : own;
  if (set === 'host' || set === 'baseline-host') return { build, sessions: { session: await ort.InferenceSession.create(build.hostGraph(), o), base: null } };
  const s = await build.openSessions(build.model, o);
  return { build, sessions: set === 'full' ? { session: s.session, base: null } : s };
}
const samplingNames = args.sampling!.split(',');
for (const name of samplingNames) if (!SAMPLINGS[name]) throw new Error(`--sampling: one of ${Object.keys(SAMPLINGS).join(', ')}`);
const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
for (const prepack of args.prepack!.split(',')) {
  const sessions = new Map<GraphSet, Variant>();
  for (const set of graphSets) sessions.set(set, await open(set, { ...options, extra: { session: { disable_prepacking: prepack === 'off' ? '1' : '0' } } }));
  for (const B of args.batches!.split(',').map(Number)) {
    const variants = samplingNames.flatMap((samplingName) => graphSets.map((set) => ({ samplingName, set })));
    const runsOf = new Map(variants.map((v) => [`${v.samplingName}/${v.set}`, [] as Awaited<ReturnType<typeof measure>>[]]));
    for (const v of variants) await measure(sessions.get(v.set)!, B, SAMPLINGS[v.samplingName]); // warm-up
    // Interleaved rounds (every sampling × graph set once per round): the machine's load drifts alike for every variant.
    for (let round = 0; round < ROUNDS; round++) for (const v of variants) runsOf.get(`${v.samplingName}/${v.set}`)!.push(await measure(sessions.get(v.set)!, B, SAMPLINGS[v.samplingName]));
    for (const samplingName of samplingNames) {
      for (const set of graphSets) {
        const r = runsOf.get(`${samplingName}/${set}`)!;
        const decodeTps = r.map((x) => (B * x.steps) / (x.decodeMs / 1000));
        const prefillTps = r.map((x) => (B * PROMPT) / (x.prefillMs / 1000));
        const stepMs = r.map((x) => x.decodeMs / x.steps);
        const hostMs = r.map((x) => x.hostMsPerStep);
        const avgT = PROMPT + DECODE_STEPS / 2;
        const ofCeiling = r.map((x) => (100 * ((x.steps * B * (matmulFlopsPerToken + attnFlops(avgT) + headFlops)) / (x.decodeMs / 1000) / 1e9)) / ceiling);
        // Weights read per second (each step reads them once) against the read ceiling.
        const ofReadCeiling = r.map((x) => (100 * ((x.steps * stepWeightBytes) / (x.decodeMs / 1000) / 1e9)) / readCeiling);
        const row = {
          prepack,
          graphs: set,
          batch: B,
          sampling: samplingName,
          decodeTokensPerS: { median: Math.round(median(decodeTps)), min: Math.round(Math.min(...decodeTps)), max: Math.round(Math.max(...decodeTps)) },
          decodeStepMs: +median(stepMs).toFixed(2),
          hostMsPerStep: { median: +median(hostMs).toFixed(2), min: +Math.min(...hostMs).toFixed(2), max: +Math.max(...hostMs).toFixed(2) },
          prefillTokensPerS: Math.round(median(prefillTps)),
          decodeOfCeiling: +median(ofCeiling).toFixed(1),
          weightReadsOfCeiling: +median(ofReadCeiling).toFixed(1),
        };
        results.push(row);
        rows.push([prepack, set, B, samplingName, spread(decodeTps), spread(stepMs, 2), spread(hostMs, 2), Math.round(median(prefillTps)), `${row.decodeOfCeiling}%`, `${row.weightReadsOfCeiling}%`]);
      }
    }
  }
}
console.log(`\nTimes are whole worker steps (feeds, session.run, sampling, KV append); "host ms/step" is the part outside session.run. Median (min–max) of ${ROUNDS} interleaved rounds per variant; each round repeats prefill + ${DECODE_STEPS} decode steps until its decode steps took ${MIN_MS} ms.`);
console.log(`forward pass of ${model.dir} (${c.modelType}, ${(layerWeights / 1e6).toFixed(1)}M layer weights), ${c.layers} layers × ${c.hidden} wide, prompt ${PROMPT} tokens, ${DECODE_STEPS} decode steps, provider ${args.provider}, ${THREADS} intra-op threads, cpu: ${cpus()[0]?.model}`);
console.log(`ceiling: one 1024×1024×1024 MatMul through onnxruntime-node ${ort.env.versions.common} = ${ceiling.toFixed(1)} GFLOP/s`);
console.log(`read ceiling: one 1×1024 by 1024×${Math.ceil(readCeilingBytes / 4 / 1024)} MatMul, as many weight bytes as a decode step reads (${(stepWeightBytes / 1e6).toFixed(1)} MB; 256 MiB at most) = ${readCeiling.toFixed(1)} GB/s; a step's weight reads at that rate take ${((stepWeightBytes / readCeiling / 1e9) * 1000).toFixed(3)} ms\n`);
printTable(['prepack', 'graphs', 'batch', 'sampling', 'decode tok/s', 'decode ms/step', 'host ms/step', 'prefill tok/s', 'decode % of ceiling', 'weight reads % of read ceiling'], rows);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ date: new Date().toISOString(), cpu: cpus()[0]?.model, cores: cpus().length, node: process.version, onnxruntime: ort.env.versions.common, model: model.dir, modelType: c.modelType, threads: THREADS, baselineBuild: args['baseline-build'] ?? null, rounds: ROUNDS, minMs: MIN_MS, promptTokens: PROMPT, decodeSteps: DECODE_STEPS, ceilingGflops: +ceiling.toFixed(1), stepWeightBytes, readCeilingGBs: +readCeiling.toFixed(1), rows: results }, null, 2));
