/**
 * What per-row LoRA/IA3 costs, measured in one run with the variants interleaved in rounds (medians):
 * 1. An all-base batch (no LoRA/IA3 row) through the served graph (an If between an adapted and a
 *    plain body, src/model/adapter-ops.ts), through one body with the adapter ops always on, and
 *    through the plain body alone (the graph without LoRA/IA3 inputs): the price rows without them pay.
 * 2. Three ways to apply a batch's LoRA factors per row, on one linear module of the model's shapes:
 *    (a) padded per-row factors A [B, in, r_max], B [B, r_max, out] (the host copies each row's factors),
 *    (b) a stacked table of the adapters [N, in, r], [N, r, out] and a per-row index (Gather in the graph),
 *    (c) the adapters stacked along the rank axis, A [in, N·r], B [N·r, out], and a per-row 0/1
 *        selection [B, 1, N·r] between the two products (what adaptedLinear does).
 *    Each is timed per step (session.run) and per feed build (what the host does when rows change owner).
 *   node dist/bench/lora.js [--rounds 7]
 */
import ort from 'onnxruntime-node';
import { parseArgs } from 'node:util';
import { fullLogitsFeeds } from '../src/executor/head.js';
import { FeedContext } from '../src/executor/model-constants.js';
import { loadBaseModel } from '../src/model/base-model.js';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import { buildGraph, type GraphVariant } from '../src/model/graph-cache.js';
import { GraphBuilder } from '../src/model/onnx-builder.js';
import { machineInfo } from './harness.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '7' }, threads: { type: 'string', default: '1' } } });
const ROUNDS = Number(args.rounds);
const options: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: Number(args.threads), interOpNumThreads: 1 };
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** This process's CPU time (user + system) in ms. */
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/**
 * Per variant, the median over rounds of its mean CPU ms per call. Within a round the variants take
 * turns call by call, so a change of machine load hits them all alike. CPU time rather than wall
 * time: on a shared machine, waiting for a core is not the variant's cost, and with one ORT thread a
 * run's CPU time is its work.
 */
async function interleaved(variants: Record<string, () => Promise<unknown> | unknown>, budgetMs = 400): Promise<Record<string, number>> {
  const names = Object.keys(variants);
  const perRound: Record<string, number[]> = Object.fromEntries(names.map((k) => [k, []]));
  for (const k of names) await variants[k](); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    const spent: Record<string, number> = Object.fromEntries(names.map((k) => [k, 0]));
    let calls = 0;
    while (calls < 3 || Object.values(spent).reduce((a, b) => a + b, 0) < budgetMs) {
      for (const k of names) {
        const t0 = cpuMs();
        await variants[k]();
        spent[k] += cpuMs() - t0;
      }
      calls++;
    }
    for (const k of names) perRound[k].push(spent[k] / calls);
  }
  return Object.fromEntries(names.map((k) => [k, median(perRound[k])]));
}

// 1. All-base batches.
const model = loadBaseModel(process.env.MODEL_DIR ?? 'models/demo-gpt2', process.env.CACHE_DIR ?? '.cache');
const ckpt = loadCheckpoint(model.dir);
const c = model.config;
const ctx = new FeedContext(model.tensors);
const sessions = {} as Record<GraphVariant, ort.InferenceSession>;
for (const v of ['plain', 'branched', 'adapted'] as const) sessions[v] = await ort.InferenceSession.create(buildGraph(ckpt, v), options);

function baseFeeds(B: number, S: number, P: number): Record<string, ort.Tensor> {
  const f: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', new Float32Array(B * S * c.hidden).fill(0.01), [B, S, c.hidden]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from({ length: B * S }, (_, i) => BigInt(P + (i % S))), [B, S]),
    attn_bias: new ort.Tensor('float32', new Float32Array(B * S * (P + S)), [B, 1, S, P + S]),
    logit_index: new ort.Tensor('int64', BigInt64Array.from({ length: B }, (_, i) => BigInt(i * S + S - 1)), [B]),
    ...ctx.biasFeeds(new Array(B).fill(null)),
    ...ctx.adapterFeeds(new Array(B).fill(null)),
  };
  for (let l = 0; l < c.layers; l++) {
    f[`past_key_${l}`] = new ort.Tensor('float32', new Float32Array(B * c.hidden * P).fill(0.01), [B, c.heads, P, c.headDim]);
    f[`past_value_${l}`] = new ort.Tensor('float32', new Float32Array(B * c.hidden * P).fill(0.01), [B, c.heads, P, c.headDim]);
  }
  // Full logits for every picked row, as before the sampling head: the same work in every variant.
  return fullLogitsFeeds(sessions.branched, f);
}
const only = (s: ort.InferenceSession, f: Record<string, ort.Tensor>) => Object.fromEntries(s.inputNames.map((n) => [n, f[n]]));

const shapes = [
  { label: 'decode, batch 1', B: 1, S: 1, P: 64 },
  { label: 'decode, batch 8', B: 8, S: 1, P: 64 },
  { label: 'decode, batch 64', B: 64, S: 1, P: 64 },
  { label: 'prefill, 8 × 64 tokens', B: 8, S: 64, P: 0 },
];
const baseRows: (string | number)[][] = [];
for (const s of shapes) {
  const f = baseFeeds(s.B, s.S, s.P);
  const t = await interleaved(Object.fromEntries((['plain', 'branched', 'adapted'] as const).map((v) => [v, () => sessions[v].run(only(sessions[v], f))])));
  const pct = (x: number) => `${(100 * (x / t.plain - 1)).toFixed(1)} %`;
  baseRows.push([s.label, t.plain.toFixed(3), t.branched.toFixed(3), pct(t.branched), t.adapted.toFixed(3), pct(t.adapted)]);
}

// 2. LoRA designs on one module, N distinct adapters of rank r spread over the batch's rows.
const N = 8;
const R = 8;
const rand = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 7919 + i * 104729) * 0.05);

function designGraph(design: 'a' | 'b' | 'c', IN: number, OUT: number): Uint8Array {
  const g = new GraphBuilder();
  const x = g.input('x', 'float', ['batch', 'seq', IN]);
  const y = g.one('MatMul', [x, g.weight('w', [IN, OUT], rand(IN * OUT, 1))]);
  let update: string;
  if (design === 'a') {
    update = g.one('MatMul', [g.one('MatMul', [x, g.input('A', 'float', ['batch', IN, 'r'])]), g.input('B', 'float', ['batch', 'r', OUT])]);
  } else if (design === 'b') {
    const idx = g.input('idx', 'int64', ['batch']);
    const A = g.one('Gather', [g.input('A', 'float', ['n', IN, 'r']), idx], { axis: 0 });
    const B = g.one('Gather', [g.input('B', 'float', ['n', 'r', OUT]), idx], { axis: 0 });
    update = g.one('MatMul', [g.one('MatMul', [x, A]), B]);
  } else {
    const sel = g.input('sel', 'float', ['batch', 1, 'k']);
    update = g.one('MatMul', [g.one('Mul', [g.one('MatMul', [x, g.input('A', 'float', [IN, 'k'])]), sel]), g.input('B', 'float', ['k', OUT])]);
  }
  g.output(g.one('Add', [y, update]), 'y', ['batch', 'seq', OUT]);
  return g.serialize(20, `LoRA design ${design}`);
}

/** The host's work when rows change owner: each design's feeds from per-adapter A [in, r] and B [r, out]. */
function designFeeds(design: 'a' | 'b' | 'c', IN: number, OUT: number, B: number, rowAdapter: number[], ad: { a: Float32Array; b: Float32Array }[]): Record<string, ort.Tensor> {
  if (design === 'a') {
    const A = new Float32Array(B * IN * R);
    const Bf = new Float32Array(B * R * OUT);
    rowAdapter.forEach((n, row) => {
      A.set(ad[n].a, row * IN * R);
      Bf.set(ad[n].b, row * R * OUT);
    });
    return { A: new ort.Tensor('float32', A, [B, IN, R]), B: new ort.Tensor('float32', Bf, [B, R, OUT]) };
  }
  if (design === 'b') {
    const A = new Float32Array(N * IN * R);
    const Bf = new Float32Array(N * R * OUT);
    ad.forEach((f, n) => {
      A.set(f.a, n * IN * R);
      Bf.set(f.b, n * R * OUT);
    });
    return { A: new ort.Tensor('float32', A, [N, IN, R]), B: new ort.Tensor('float32', Bf, [N, R, OUT]), idx: new ort.Tensor('int64', BigInt64Array.from(rowAdapter, BigInt), [B]) };
  }
  const K = N * R;
  const A = new Float32Array(IN * K);
  const Bf = new Float32Array(K * OUT);
  ad.forEach((f, n) => {
    for (let i = 0; i < IN; i++) A.set(f.a.subarray(i * R, (i + 1) * R), i * K + n * R);
    Bf.set(f.b, n * R * OUT);
  });
  const sel = new Float32Array(B * K);
  rowAdapter.forEach((n, row) => sel.fill(1, row * K + n * R, row * K + (n + 1) * R));
  return { A: new ort.Tensor('float32', A, [IN, K]), B: new ort.Tensor('float32', Bf, [K, OUT]), sel: new ort.Tensor('float32', sel, [B, 1, K]) };
}

const designRows: (string | number)[][] = [];
for (const m of [
  { name: 'attn.c_attn', IN: c.hidden, OUT: 3 * c.hidden },
  { name: 'mlp.c_proj', IN: c.inner, OUT: c.hidden },
]) {
  const ad = Array.from({ length: N }, (_, n) => ({ a: rand(m.IN * R, 10 + n), b: rand(R * m.OUT, 100 + n) }));
  const ds = {} as Record<'a' | 'b' | 'c', ort.InferenceSession>;
  for (const d of ['a', 'b', 'c'] as const) ds[d] = await ort.InferenceSession.create(designGraph(d, m.IN, m.OUT), options);
  for (const s of [
    { label: 'decode, batch 64', B: 64, S: 1 },
    { label: 'prefill, 8 × 64 tokens', B: 8, S: 64 },
  ]) {
    const rows = Array.from({ length: s.B }, (_, i) => i % N);
    const x = new ort.Tensor('float32', rand(s.B * s.S * m.IN, 3), [s.B, s.S, m.IN]);
    const feeds = Object.fromEntries((['a', 'b', 'c'] as const).map((d) => [d, { x, ...designFeeds(d, m.IN, m.OUT, s.B, rows, ad) }]));
    const outs = await Promise.all((['a', 'b', 'c'] as const).map(async (d) => (await ds[d].run(feeds[d])).y.data as Float32Array));
    const diff = outs[0].reduce((mx, v, i) => Math.max(mx, Math.abs(v - outs[1][i]), Math.abs(v - outs[2][i])), 0);
    const run = await interleaved(Object.fromEntries((['a', 'b', 'c'] as const).map((d) => [d, () => ds[d].run(feeds[d])])));
    const build = await interleaved(Object.fromEntries((['a', 'b', 'c'] as const).map((d) => [d, () => designFeeds(d, m.IN, m.OUT, s.B, rows, ad)])));
    const bytes = (d: 'a' | 'b' | 'c') => Object.values(feeds[d]).reduce((n, t) => n + (t === x ? 0 : (t.data as ArrayBufferView).byteLength), 0);
    for (const d of ['a', 'b', 'c'] as const) {
      designRows.push([`${m.name} ${m.IN}→${m.OUT}`, s.label, { a: '(a) padded per row', b: '(b) table + index', c: '(c) rank-stacked + select' }[d], run[d].toFixed(3), build[d].toFixed(3), (bytes(d) / 1024).toFixed(0), diff.toExponential(1)]);
    }
  }
}

const info = machineInfo();
console.log(`\nLoRA/IA3 cost: ${info.cpu}, ${info.cores} cores, ${options.intraOpNumThreads} ORT thread(s), medians of ${ROUNDS} interleaved rounds of CPU time\n`);
console.log('1. all-base batches (no LoRA/IA3 row): CPU ms per session.run');
printTable(['step', 'plain body (no LoRA/IA3 inputs)', 'served: If(adapted, plain)', 'overhead', 'adapter ops always on', 'overhead'], baseRows);
console.log(`\n2. LoRA designs: ${N} adapters of rank ${R}, rows assigned round-robin; CPU ms per run, CPU ms per feed build, feed KiB; max |difference| between designs`);
printTable(['module', 'step', 'design', 'run ms', 'feed build ms', 'feed KiB', 'max diff'], designRows);
