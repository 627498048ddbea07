/**
 * Forward-pass throughput of the built graph on this machine's provider, against the ceiling of one
 * large MatMul through the same ONNX Runtime: how much of the hardware the model's shapes reach.
 * Any MODEL_DIR (every supported architecture). `--prepack on,off` compares ONNX Runtime's weight
 * prepacking (faster GEMMs, but a private copy of the weights per session) with sessions that read
 * the memory-mapped external data in place (one copy shared by every worker).
 * `--provider cpu|webgpu` picks ONNX Runtime's execution provider (the ceiling runs on it too).
 */
import ort from 'onnxruntime-node';
import { cpus } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FeedContext } from '../src/executor/model-constants.js';
import { StepRunner } from '../src/executor/step-runner.js';
import { loadBaseModel } from '../src/model/base-model.js';
import { architectureOf } from '../src/model/architectures/index.js';
import { GraphBuilder } from '../src/model/onnx-builder.js';
import type { StepPlan } from '../src/protocol.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({ options: { batches: { type: 'string', default: '1,8,32,64' }, prepack: { type: 'string', default: 'on' }, provider: { type: 'string', default: 'cpu' }, out: { type: 'string', default: join(process.env.BENCH_OUT ?? 'bench/results', 'forward.json') } } });
const THREADS = Number(process.env.INTRA_OP_THREADS ?? cpus().length);
const PROMPT = 64;
const DECODE_STEPS = 32;
const options: ort.InferenceSession.SessionOptions = { executionProviders: [args.provider!], graphOptimizationLevel: 'all', intraOpNumThreads: THREADS, interOpNumThreads: 1 };

/** Best of several runs of a 1024³ MatMul: the most this provider gives one big, friendly GEMM. */
async function matmulCeiling(): Promise<number> {
  const n = 1024;
  const g = new GraphBuilder();
  const a = g.input('a', 'float', [n, n]);
  const w = g.weight('w', [n, n], Float32Array.from({ length: n * n }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5));
  g.output(g.one('MatMul', [a, w]), 'y', [n, n]);
  const s = await ort.InferenceSession.create(g.serialize(20, 'matmul ceiling'), options);
  const feeds = { a: new ort.Tensor('float32', new Float32Array(n * n).fill(0.5), [n, n]) };
  for (let i = 0; i < 3; i++) await s.run(feeds);
  let best = 0;
  for (let round = 0; round < 5; round++) {
    const reps = 10;
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await s.run(feeds);
    best = Math.max(best, (2 * n ** 3 * reps) / ((performance.now() - t0) / 1000) / 1e9);
  }
  return best;
}

const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const c = model.config;
const ceiling = await matmulCeiling();
// Every matrix of the layers is one multiply-add per weight and token (embeddings and head aside).
const arch = architectureOf(c.modelType);
let layerWeights = 0;
for (const [name, shape] of arch.weightShapes(c)) if (shape.length === 2 && name !== arch.embedding && !/wpe|lm_head/.test(name)) layerWeights += shape[0] * shape[1];
const matmulFlopsPerToken = 2 * layerWeights;
const attnFlops = (T: number) => 4 * T * c.heads * c.headDim * c.layers;
const headFlops = 2 * c.hidden * c.vocabSize;
const sampling = { temperature: 0, topP: 1, topK: 0, seed: 1, logprobs: 0 };
const empty = (): StepPlan => ({ drop: [], decode: [], prefill: [], score: [], adapters: [], forget: [] });

const rows: (string | number)[][] = [];
const results: Record<string, unknown>[] = [];
for (const prepack of args.prepack!.split(',')) {
  const session = await ort.InferenceSession.create(model.graphPath, { ...options, extra: { session: { disable_prepacking: prepack === 'off' ? '1' : '0' } } });
  for (const B of args.batches!.split(',').map(Number)) {
    const runner = new StepRunner(session, new FeedContext(model.tensors));
    const tokens = Array.from({ length: PROMPT }, (_, i) => 100 + ((i * 37) % 3000));
    let prefillMs = Infinity;
    let last: number[] = [];
    // Best of three prefills, each into a fresh batch (the last one stays for decoding).
    for (let rep = 0; rep < 3; rep++) {
      const plan = empty();
      plan.drop = rep > 0 ? Array.from({ length: B }, (_, i) => (rep - 1) * B + i) : [];
      plan.prefill = Array.from({ length: B }, (_, i) => ({ seq: rep * B + i, adapter: null, tokens, sampling }));
      const r = await runner.step(plan);
      prefillMs = Math.min(prefillMs, r.ms.total);
      last = r.tokens.map((x) => x.token);
    }
    const base = 2 * B;
    let decodeMs = 0;
    let sessionMs = 0;
    for (let step = 1; step <= DECODE_STEPS; step++) {
      const plan = empty();
      plan.decode = last.map((token, i) => ({ seq: base + i, token, step }));
      const r = await runner.step(plan);
      decodeMs += r.ms.total;
      sessionMs += r.ms.run;
      last = r.tokens.map((x) => x.token);
    }
    const prefillFlops = B * (PROMPT * matmulFlopsPerToken + attnFlops(PROMPT / 2) * PROMPT) + B * headFlops;
    const avgT = PROMPT + DECODE_STEPS / 2;
    const decodeFlops = DECODE_STEPS * B * (matmulFlopsPerToken + attnFlops(avgT) + headFlops);
    const prefillGflops = prefillFlops / (prefillMs / 1000) / 1e9;
    const decodeGflops = decodeFlops / (decodeMs / 1000) / 1e9;
    const row = {
      prepack,
      batch: B,
      prefillTokensPerS: Math.round((B * PROMPT) / (prefillMs / 1000)),
      decodeTokensPerS: Math.round((B * DECODE_STEPS) / (decodeMs / 1000)),
      prefillGflops: +prefillGflops.toFixed(1),
      decodeGflops: +decodeGflops.toFixed(1),
      prefillOfCeiling: +((100 * prefillGflops) / ceiling).toFixed(1),
      decodeOfCeiling: +((100 * decodeGflops) / ceiling).toFixed(1),
      decodeHostShare: +((100 * (decodeMs - sessionMs)) / decodeMs).toFixed(1),
    };
    results.push(row);
    rows.push([prepack, B, row.prefillTokensPerS, row.decodeTokensPerS, row.prefillGflops, row.decodeGflops, `${row.prefillOfCeiling}%`, `${row.decodeOfCeiling}%`, `${row.decodeHostShare}%`]);
  }
}
console.log('\nTimes are whole worker steps (feeds, session.run, sampling, KV append); "decode time on host" is the part outside session.run.');
console.log(`forward pass of ${model.dir} (${c.modelType}, ${(layerWeights / 1e6).toFixed(1)}M layer weights), ${c.layers} layers × ${c.hidden} wide, prompt ${PROMPT} tokens, ${DECODE_STEPS} decode steps, provider ${args.provider}, ${THREADS} intra-op threads, cpu: ${cpus()[0]?.model}`);
console.log(`ceiling: one 1024×1024×1024 MatMul through onnxruntime-node ${ort.env.versions.common} = ${ceiling.toFixed(1)} GFLOP/s\n`);
printTable(['prepack', 'batch', 'prefill tok/s', 'decode tok/s', 'prefill GFLOP/s', 'decode GFLOP/s', 'prefill % of ceiling', 'decode % of ceiling', 'decode time on host'], rows);
mkdirSync(join(args.out!, '..'), { recursive: true });
writeFileSync(args.out!, JSON.stringify({ date: new Date().toISOString(), cpu: cpus()[0]?.model, cores: cpus().length, node: process.version, provider: args.provider, onnxruntime: ort.env.versions.common, model: model.dir, modelType: c.modelType, threads: THREADS, ceilingGflops: +ceiling.toFixed(1), rows: results }, null, 2));
