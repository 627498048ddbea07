/**
 * Fused kernels, measured (issue 13): the GPT-2 forward pass as served today (plain ONNX ops, the
 * serving graph's own builder) against the same weights through ONNX Runtime's com.microsoft
 * contrib ops — MultiHeadAttention with past_key/past_value and attention_bias,
 * SkipLayerNormalization, FastGelu — in the layouts those ops need:
 *   plain          today's graph (src/model/architectures/gpt2.ts, no LoRA/IA3 inputs): keys cached
 *                  [B, H, P, hd] like values, biases fed [R, 1, n] (per-row BitFit; a LayerNorm's
 *                  as the row's difference from the checkpoint's, zeros here).
 *   fused          MHA + SkipLayerNormalization (beta and the projection bias inside) + FastGelu
 *                  (bias inside): the same KV layout, biases fed 1-D, so one set
 *                  of biases for the whole batch (no per-row BitFit).
 *   fused-rowbias  the same kernels, biases still fed [R, 1, n] and added by plain Adds, because
 *                  the contrib ops take only 1-D biases: what keeping per-row BitFit would cost.
 *   norms-only     gpt2-v9's attention and KV layout, SkipLayerNormalization + FastGelu with the
 *                  per-row biases added by plain Adds: the change that keeps every contract.
 * With a Llama-family MODEL_DIR (e.g. test/fixtures/llama/tiny-llama) the variants are `plain` and
 *   skip-norms     the serving graph with each residual Add + RMSNorm rewritten as one
 *                  SkipSimplifiedLayerNormalization (ORT fuses the RMSNorm alone on its own).
 * Every variant outputs the logits of the rows that need them and only this step's keys/values,
 * as the serving graph does (which packs them in one `new_kv`); the run checks that logits (and new keys/values) agree with plain's
 * within 1e-4 relative error before timing (exit code 1 if not). Timed: `session.run` alone (feeds
 * are built once), per case and variant, the variants interleaved in rounds (A B C A B C …); the
 * table gives each one's median and min–max over the rounds, in wall-clock and in process CPU time
 * (with 1 intra-op thread the CPU time is the work itself, which other jobs on a shared machine
 * disturb far less than the wall clock). "LM head alone" is the head's MatMul at the same rows: the
 * part of each step that no attention/norm fusion can touch. "plain, outputs pre-allocated" runs the
 * plain graph with every output passed in as a pre-allocated tensor (`fetches`). The Node binding
 * fills that buffer, but it still returns a copy in a new tensor.
 * `--ops` also prints each variant's ops after ONNX Runtime's optimiser (what it fused on its own).
 *   npm run build && node dist/bench/fused-ops.js [--rounds 5] [--batches 1,64] [--pasts 64,256] [--ops]
 * MODEL_DIR (default models/demo-gpt2), INTRA_OP_THREADS (default: all cores).
 */
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadCheckpoint } from '../src/model/checkpoint.js';
import type { Gpt2Config, LlamaConfig, WeightSource } from '../src/model/architectures/architecture.js';
import { GraphBuilder, transpose } from '../src/model/onnx-builder.js';
import { KV_OUTPUT, layerKv } from '../src/model/kv-output.js';
import { relErr } from './reference.js';
import { printTable } from './table.js';

const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    batches: { type: 'string', default: '1,64' },
    pasts: { type: 'string', default: '64,256' },
    prompt: { type: 'string', default: '64' },
    ops: { type: 'boolean', default: false },
  },
});
const ROUNDS = Number(args.rounds);
const THREADS = Number(process.env.INTRA_OP_THREADS ?? cpus().length);
const MS = 'com.microsoft';
const NEG = -1e9; // the serving graph's masked value in attn_bias
const TOLERANCE = 1e-4;

const ckpt = loadCheckpoint(process.env.MODEL_DIR ?? 'models/demo-gpt2');
const c = ckpt.config;
const isGpt2 = c.modelType === 'gpt2';
const w = ckpt.weights;
const H = c.heads;
const KVH = c.kvHeads;
const hd = c.headDim;
const D = c.hidden;
const HEAD_WEIGHT = isGpt2 || (c as LlamaConfig).tieWordEmbeddings ? ckpt.arch.embedding : 'lm_head.weight';

type Fused = 'fused' | 'fused-rowbias' | 'norms-only' | 'skip-norms';
type Variant = 'plain' | Fused;
/** mha: MultiHeadAttention (keys cached [B, H, P, hd]) or gpt2-v9's attention; rowBias: biases [R, 1, n] through plain Adds. */
const SPECS: Record<Fused, { mha: boolean; rowBias: boolean }> = {
  fused: { mha: true, rowBias: false },
  'fused-rowbias': { mha: true, rowBias: true },
  'norms-only': { mha: false, rowBias: true },
  'skip-norms': { mha: false, rowBias: true },
};
// Llama, Mistral, Qwen2: the serving graph with residual Add + RMSNorm as SkipSimplifiedLayerNormalization
// (MultiHeadAttention has no grouped-query form; GroupQueryAttention wants per-row lengths, not attn_bias).
const FUSED: Fused[] = isGpt2 ? ['fused', 'fused-rowbias', 'norms-only'] : ['skip-norms'];
const VARIANTS: Variant[] = ['plain', ...FUSED];

/** Adds the com.microsoft opset and drops the Skip*Normalization outputs nobody reads (mean, inv_std_var). */
function finish(bytes: Uint8Array): Uint8Array {
  const model = onnxProto.onnx.ModelProto.decode(bytes);
  model.opsetImport!.push({ domain: MS, version: 1 });
  const graph = model.graph!;
  const read = new Set<string>([...graph.node!.flatMap((n) => n.input!), ...graph.output!.map((o) => o.name!)]);
  for (const n of graph.node!) if (n.opType?.startsWith('Skip')) n.output = n.output!.map((o) => (read.has(o) ? o : ''));
  return onnxProto.onnx.ModelProto.encode(model).finish();
}

/** GPT-2 through contrib ops; the serving graph's inputs and outputs, but for the key layout with `mha` and 1-D biases without `rowBias`. */
function buildFused(w: WeightSource, { mha, rowBias }: { mha: boolean; rowBias: boolean }): Uint8Array {
  const g = new GraphBuilder();
  const W = (name: string) => g.weight(name, w.shape(name)!, w.read(name));
  const bias = new Map(ckpt.arch.biases(c).map(({ name, size }) => [name, g.input(name, 'float', rowBias ? ['bias_rows', 1, size] : [size])]));
  const B = (name: string) => bias.get(name)!;
  const embeds = g.input('inputs_embeds', 'float', ['batch', 'seq', D]);
  const positions = g.input('position_ids', 'int64', ['batch', 'seq']);
  const attnBias = g.input('attn_bias', 'float', ['batch', 1, 'seq', 'total']);
  const logitIndex = g.input('logit_index', 'int64', ['n_logits']);
  const pastK: string[] = [];
  const pastV: string[] = [];
  for (let l = 0; l < c.layers; l++) {
    pastK.push(g.input(`past_key_${l}`, 'float', ['batch', H, 'past', hd]));
    pastV.push(g.input(`past_value_${l}`, 'float', ['batch', H, 'past', hd]));
  }
  const headsShape = g.ints('shape_heads', [0, 0, H, hd]);
  const flatShape = g.ints('shape_flat', [-1, D]);
  const eps = { float: (c as Gpt2Config).layerNormEps };
  const splitHeads = (x: string) => g.one('Transpose', [g.one('Reshape', [x, headsShape])], { perm: [0, 2, 1, 3] });
  const qScale = g.scalar('q_scale', 1 / Math.sqrt(hd));
  const axisLast = g.ints('axis_last', [3]);
  const bigEnd = g.ints('big_end', [2 ** 31 - 1]);
  const zero = g.ints('zero', [0]);
  const mergedShape = g.ints('shape_merged', [0, 0, D]);

  /** The serving graph's attention as of gpt2-v9 (src/model/architectures/gpt2.ts): scores over the cache as (K·qᵀ)ᵀ, scores joined, cache never copied. */
  const keysT = (x: string) => g.one('Transpose', [x], { perm: [0, 1, 3, 2] });
  const plainAttention = (l: number, q: string, k: string, v: string) => {
    const kNew = splitHeads(k);
    const vNew = splitHeads(v);
    g.output(kNew, `new_key_${l}`, ['batch', H, 'seq', hd]);
    g.output(vNew, `new_value_${l}`, ['batch', H, 'seq', hd]);
    const qh = g.one('Mul', [splitHeads(q), qScale]);
    const scores = g.one('Concat', [keysT(g.one('MatMul', [pastK[l], keysT(qh)])), g.one('MatMul', [qh, keysT(kNew)])], { axis: 3 });
    const probs = g.one('Softmax', [g.one('Add', [scores, attnBias])], { axis: -1 });
    const P = g.one('Shape', [pastK[l]], { start: 2, end: 3 });
    const ctx = g.one('Add', [
      g.one('MatMul', [g.one('Slice', [probs, zero, P, axisLast]), pastV[l]]),
      g.one('MatMul', [g.one('Slice', [probs, P, bigEnd, axisLast]), vNew]),
    ]);
    return g.one('Reshape', [g.one('Transpose', [ctx], { perm: [0, 2, 1, 3] }), mergedShape]);
  };
  const mhaAttention = (l: number, q: string, k: string, v: string) => {
    g.output(splitHeads(k), `new_key_${l}`, ['batch', H, 'seq', hd]);
    g.output(splitHeads(v), `new_value_${l}`, ['batch', H, 'seq', hd]);
    // ORT 1.30's CPU kernel reads past_key/past_value only when both present outputs exist (without
    // them it silently attends to the new token alone), so MHA writes the whole [B, H, P+S, hd] cache
    // every step; the presents stay inside the graph (named, read by nothing) and are never copied out.
    return g.op('MultiHeadAttention', [q, k, v, '', '', attnBias, pastK[l], pastV[l]], { num_heads: H }, 3, MS)[0];
  };

  /** LayerNorm(x + delta + deltaBias) and the residual sum x + delta + deltaBias. */
  const skipNorm = (x: string, delta: string, deltaBias: string, ln: string): [string, string] => {
    if (!rowBias) {
      const [normed, , , sum] = g.op('SkipLayerNormalization', [x, delta, W(`${ln}.weight`), B(`${ln}.bias`), B(deltaBias)], { epsilon: eps }, 4, MS);
      return [normed, sum];
    }
    const [normed, , , sum] = g.op('SkipLayerNormalization', [x, g.one('Add', [delta, B(deltaBias)]), W(`${ln}.weight`)], { epsilon: eps }, 4, MS);
    return [g.one('Add', [normed, B(`${ln}.bias`)]), sum];
  };

  let x = g.one('Add', [embeds, g.one('Gather', [W('transformer.wpe.weight'), positions], { axis: 0 })]);
  const ln1 = `transformer.h.0.ln_1`;
  let normed = rowBias
    ? g.one('Add', [g.one('LayerNormalization', [x, W(`${ln1}.weight`)], { axis: -1, epsilon: eps }), B(`${ln1}.bias`)])
    : g.one('LayerNormalization', [x, W(`${ln1}.weight`), B(`${ln1}.bias`)], { axis: -1, epsilon: eps });
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    // The qkv bias is added before the split: the new keys/values leave the graph with it applied.
    const qkv = g.one('Add', [g.one('MatMul', [normed, W(`${p}.attn.c_attn.weight`)]), B(`${p}.attn.c_attn.bias`)]);
    const [q, k, v] = g.op('Split', [qkv], { axis: 2, num_outputs: 3 }, 3);
    const attn = (mha ? mhaAttention : plainAttention)(l, q, k, v);
    const proj = g.one('MatMul', [attn, W(`${p}.attn.c_proj.weight`)]);
    [normed, x] = skipNorm(x, proj, `${p}.attn.c_proj.bias`, `${p}.ln_2`);
    const fc = g.one('MatMul', [normed, W(`${p}.mlp.c_fc.weight`)]);
    const act = rowBias ? g.op('FastGelu', [g.one('Add', [fc, B(`${p}.mlp.c_fc.bias`)])], {}, 1, MS)[0] : g.op('FastGelu', [fc, B(`${p}.mlp.c_fc.bias`)], {}, 1, MS)[0];
    const mlp = g.one('MatMul', [act, W(`${p}.mlp.c_proj.weight`)]);
    [normed, x] = skipNorm(x, mlp, `${p}.mlp.c_proj.bias`, l + 1 < c.layers ? `transformer.h.${l + 1}.ln_1` : 'transformer.ln_f');
  }
  const picked = g.one('Gather', [g.one('Reshape', [normed, flatShape]), logitIndex], { axis: 0 });
  const lmHead = g.weight('lm_head_t', [D, c.vocabSize], transpose(w.read('transformer.wte.weight'), c.vocabSize, D));
  g.output(g.one('MatMul', [picked, lmHead]), 'logits', ['n_logits', c.vocabSize]);
  return finish(g.serialize(20, `gpt2 fused (mha=${mha}, rowBias=${rowBias})`));
}

function buildPlain(w: WeightSource): Uint8Array {
  const g = new GraphBuilder();
  const opset = ckpt.arch.build(c, w, g, 'bias', 'host');
  return g.serialize(opset, `${c.modelType} plain (serving graph without LoRA/IA3)`);
}

/**
 * The serving Llama graph with each residual Add feeding an RMSNorm (Pow, ReduceMean, Add, Sqrt,
 * Div, Mul: llama.ts) rewritten as one SkipSimplifiedLayerNormalization, whose fourth output is the
 * residual sum the next layer reads.
 */
function fuseSkipRmsNorm(bytes: Uint8Array): Uint8Array {
  const model = onnxProto.onnx.ModelProto.decode(bytes);
  const nodes = model.graph!.node!;
  const producer = new Map(nodes.flatMap((n) => n.output!.map((o) => [o, n] as const)));
  const consumers = (value: string) => nodes.filter((n) => n.input!.includes(value));
  const only = (value: string, opType: string) => {
    const next = consumers(value).filter((n) => n.opType === opType);
    return next.length === 1 ? next[0] : undefined;
  };
  const dropped = new Set<object>();
  let fused = 0;
  for (const pow of nodes.filter((n) => n.opType === 'Pow')) {
    const sum = pow.input![0];
    const add = producer.get(sum);
    if (!add || add.opType !== 'Add') continue; // the first layer's norm reads the embeddings
    const mean = only(pow.output![0], 'ReduceMean');
    const plusEps = mean && only(mean.output![0], 'Add');
    const sqrt = plusEps && only(plusEps.output![0], 'Sqrt');
    const div = sqrt && only(sqrt.output![0], 'Div');
    const mul = div && div.input![0] === sum ? only(div.output![0], 'Mul') : undefined;
    if (!mean || !plusEps || !sqrt || !div || !mul) continue;
    const skip = onnxProto.onnx.NodeProto.create({
      opType: 'SkipSimplifiedLayerNormalization',
      domain: MS,
      name: `SkipSimplifiedLayerNormalization_${fused++}`,
      input: [add.input![0], add.input![1], mul.input![1]],
      output: [mul.output![0], '', '', sum],
      attribute: [{ name: 'epsilon', type: onnxProto.onnx.AttributeProto.AttributeType.FLOAT, f: (c as LlamaConfig).rmsNormEps }],
    });
    nodes[nodes.indexOf(add)] = skip; // where the Add was: its inputs exist, its readers come later
    for (const n of [pow, mean, plusEps, sqrt, div, mul]) dropped.add(n);
  }
  if (fused === 0) throw new Error('no residual Add + RMSNorm pattern found');
  model.graph!.node = nodes.filter((n) => !dropped.has(n));
  return finish(onnxProto.onnx.ModelProto.encode(model).finish());
}

function buildVariant(v: Variant): Uint8Array {
  if (v === 'plain') return buildPlain(w);
  if (v === 'skip-norms') return fuseSkipRmsNorm(buildPlain(w));
  return buildFused(w, SPECS[v]);
}

/** The LM head's MatMul alone, at the rows a step asks logits for. */
function buildHead(w: WeightSource): Uint8Array {
  const g = new GraphBuilder();
  const h = g.input('h', 'float', ['n', D]);
  const lmHead = g.weight('lm_head_t', [D, c.vocabSize], transpose(w.read(HEAD_WEIGHT), c.vocabSize, D));
  g.output(g.one('MatMul', [h, lmHead]), 'logits', ['n', c.vocabSize]);
  return g.serialize(20, 'lm head');
}

/** Deterministic pseudo-random values in [-a, a). */
function noise(n: number, seed: number, a: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 2 * a;
  }
  return out;
}

interface Case {
  name: string;
  batch: number;
  seq: number;
  past: number;
}

/**
 * One step's inputs, ragged like the serving batch: decode rows have different valid pasts (the rest
 * masked), prefill rows different prompt lengths (causal, padding masked). Keys are the same numbers
 * in each variant's layout.
 */
function feedsFor(k: Case, wte: Float32Array) {
  const { batch: b, seq: S, past: P } = k;
  const T = P + S;
  const embeds = new Float32Array(b * S * D);
  const positions = new BigInt64Array(b * S);
  const attnBias = new Float32Array(b * S * T).fill(NEG);
  const logitIndex = new BigInt64Array(b);
  for (let r = 0; r < b; r++) {
    const valid = P === 0 ? 0 : P - ((r * 13) % Math.max(1, P / 2)); // valid past columns, right-aligned
    const len = S - (P === 0 ? (r % 4) * Math.floor(S / 8) : 0); // real tokens of this row
    for (let s = 0; s < S; s++) {
      const token = (r * 7919 + s * 104729) % c.vocabSize;
      embeds.set(wte.subarray(token * D, (token + 1) * D), (r * S + s) * D);
      positions[r * S + s] = BigInt(valid + s);
      for (let t = P - valid; t < P; t++) attnBias[(r * S + s) * T + t] = 0;
      for (let j = 0; j <= s && j < len; j++) attnBias[(r * S + s) * T + P + j] = 0;
    }
    logitIndex[r] = BigInt(r * S + len - 1);
  }
  const common: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', embeds, [b, S, D]),
    position_ids: new ort.Tensor('int64', positions, [b, S]),
    attn_bias: new ort.Tensor('float32', attnBias, [b, 1, S, T]),
    logit_index: new ort.Tensor('int64', logitIndex, [b]),
  };
  const byVariant = {} as Record<Variant, Record<string, ort.Tensor>>;
  for (const v of VARIANTS) byVariant[v] = { ...common };
  for (let l = 0; l < c.layers; l++) {
    const keys = noise(b * KVH * P * hd, 1 + l, 2); // [B, KVH, P, hd]
    const values = noise(b * KVH * P * hd, 101 + l, 1);
    for (const v of VARIANTS) byVariant[v][`past_key_${l}`] = new ort.Tensor('float32', keys, [b, KVH, P, hd]);
    for (const v of VARIANTS) byVariant[v][`past_value_${l}`] = new ort.Tensor('float32', values, [b, KVH, P, hd]);
  }
  for (const { name, size, inNorm } of ckpt.arch.biases(c)) {
    const data = w.read(name);
    // The serving graph holds a norm's bias inside the op and takes each row's difference from it (none here).
    for (const v of VARIANTS) byVariant[v][name] = new ort.Tensor('float32', v === 'plain' && inNorm ? new Float32Array(size) : data, v === 'plain' || SPECS[v].rowBias ? [1, 1, size] : [size]);
  }
  const head = { h: new ort.Tensor('float32', noise(b * D, 7, 1), [b, D]) };
  return { byVariant, head };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

ort.env.logLevel = 'error';
const options: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', intraOpNumThreads: THREADS, interOpNumThreads: 1 };
const sessions = {} as Record<Variant | 'head', ort.InferenceSession>;
for (const v of VARIANTS) sessions[v] = await ort.InferenceSession.create(buildVariant(v), options);
sessions.head = await ort.InferenceSession.create(buildHead(w), options);
const wte = w.read(ckpt.arch.embedding);

if (args.ops) {
  // Each variant as ORT runs it: op counts of the graph its optimiser writes out at level 'all'.
  const dir = mkdtempSync(join(tmpdir(), 'fused-ops-'));
  const counts = new Map<string, Map<string, number>>();
  for (const v of VARIANTS) {
    const file = join(dir, `${v}.onnx`);
    await (await ort.InferenceSession.create(buildVariant(v), { ...options, optimizedModelFilePath: file })).release();
    const count = new Map<string, number>();
    for (const n of onnxProto.onnx.ModelProto.decode(readFileSync(file)).graph!.node!) {
      const key = `${n.domain ? `${n.domain}:` : ''}${n.opType}`;
      count.set(key, (count.get(key) ?? 0) + 1);
    }
    counts.set(v, count);
  }
  rmSync(dir, { recursive: true });
  const ops = [...new Set([...counts.values()].flatMap((m) => [...m.keys()]))].sort();
  console.log(`\nOps after ORT ${ort.env.versions.common} 'all', per variant:`);
  printTable(['op', ...VARIANTS], ops.map((op) => [op, ...VARIANTS.map((v) => counts.get(v)!.get(op) ?? 0)]));
}

/** Layer l's new keys and values: packed in `new_kv` by the serving builder (plain, skip-norms), one output each in buildFused's graphs. */
function kvOf(out: ort.InferenceSession.ReturnType, l: number): { keys: Float32Array; values: Float32Array } {
  if (out[KV_OUTPUT]) return layerKv(out[KV_OUTPUT].data as Float32Array, c.layers, l);
  return { keys: out[`new_key_${l}`].data as Float32Array, values: out[`new_value_${l}`].data as Float32Array };
}

const cases: Case[] = [];
const batches = args.batches!.split(',').map(Number);
for (const past of args.pasts!.split(',').map(Number)) for (const batch of batches) cases.push({ name: `decode P=${past}`, batch, seq: 1, past });
for (const batch of batches) cases.push({ name: `prefill S=${args.prompt}`, batch, seq: Number(args.prompt), past: 0 });

const loadBefore = loadavg()[0];
const rows: (string | number)[][] = [];
const agreement: (string | number)[][] = [];
for (const k of cases) {
  const { byVariant, head } = feedsFor(k, wte);
  // Agreement first: the contrib variants must give plain's logits and new keys/values.
  const out = {} as Record<Variant, ort.InferenceSession.ReturnType>;
  for (const v of VARIANTS) out[v] = await sessions[v].run(byVariant[v]);
  for (const v of FUSED) {
    const logits = relErr(out[v].logits.data as Float32Array, out.plain.logits.data as Float32Array);
    let kv = 0;
    for (let l = 0; l < c.layers; l++) {
      const [mine, plain] = [kvOf(out[v], l), kvOf(out.plain, l)];
      kv = Math.max(kv, relErr(mine.keys, plain.keys), relErr(mine.values, plain.values));
    }
    agreement.push([k.name, k.batch, v, logits.toExponential(2), kv.toExponential(2), logits <= TOLERANCE && kv <= TOLERANCE ? 'yes' : 'NO']);
    if (!(logits <= TOLERANCE && kv <= TOLERANCE)) process.exitCode = 1;
  }
  // The plain graph again with every output pre-allocated (fetches): the Node binding fills these
  // buffers, so check it gives the same numbers.
  const fetches = Object.fromEntries(
    sessions.plain.outputNames.map((name) => [name, new ort.Tensor('float32', new Float32Array(out.plain[name].size), out.plain[name].dims)]),
  );
  const preallocated = await sessions.plain.run(byVariant.plain, fetches);
  const sameAsPlain = sessions.plain.outputNames.every((name) => relErr(preallocated[name].data as Float32Array, out.plain[name].data as Float32Array) === 0);
  agreement.push([k.name, k.batch, 'plain, outputs pre-allocated', sameAsPlain ? 'identical' : 'DIFFERENT', sameAsPlain ? 'identical' : 'DIFFERENT', sameAsPlain ? 'yes' : 'NO']);
  if (!sameAsPlain) process.exitCode = 1;
  // Enough runs per measurement for ~50 ms of work, at least 2.
  const t0 = performance.now();
  await sessions.plain.run(byVariant.plain);
  const reps = Math.max(2, Math.min(50, Math.round(50 / (performance.now() - t0))));
  const timed = [...VARIANTS, 'prealloc', 'head'] as const;
  const wall: Record<string, number[]> = Object.fromEntries(timed.map((v) => [v, []]));
  const cpu: Record<string, number[]> = Object.fromEntries(timed.map((v) => [v, []]));
  const runOnce: Record<(typeof timed)[number], () => Promise<unknown>> = {
    ...(Object.fromEntries(VARIANTS.map((v) => [v, () => sessions[v].run(byVariant[v])])) as Record<Variant, () => Promise<unknown>>),
    prealloc: () => sessions.plain.run(byVariant.plain, fetches),
    head: () => sessions.head.run(head),
  };
  for (let round = 0; round < ROUNDS; round++) {
    for (const v of timed) {
      const cpu0 = process.cpuUsage();
      const start = performance.now();
      for (let i = 0; i < reps; i++) await runOnce[v]();
      wall[v].push((performance.now() - start) / reps);
      const used = process.cpuUsage(cpu0);
      cpu[v].push((used.user + used.system) / 1000 / reps);
    }
  }
  const range = (xs: number[]) => `${median(xs).toFixed(2)} (${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)})`;
  for (const v of timed) {
    rows.push([
      k.name,
      k.batch,
      v === 'head' ? 'LM head alone' : v === 'prealloc' ? 'plain, outputs pre-allocated' : v,
      range(wall[v]),
      range(cpu[v]),
      `${(median(wall.plain) / median(wall[v])).toFixed(2)}×`,
      `${(median(cpu.plain) / median(cpu[v])).toFixed(2)}×`,
    ]);
  }
}

console.log(`\nfused-ops: ${process.env.MODEL_DIR ?? 'models/demo-gpt2'} (${c.modelType}) ${D} wide, ${c.layers} layers, ${H} heads (${KVH} key/value); onnxruntime-node ${ort.env.versions.common}, level 'all', ${THREADS} intra-op threads; cpu: ${cpus()[0]?.model} × ${cpus().length}`);
console.log(`${new Date().toISOString()}, load average ${loadBefore.toFixed(1)} before / ${loadavg()[0].toFixed(1)} after; ${ROUNDS} interleaved rounds\n`);
console.log(`Agreement with plain (relative L2 error; must be ≤ ${TOLERANCE}):`);
printTable(['case', 'batch', 'variant', 'logits', 'new keys/values', 'within 1e-4'], agreement);
console.log('\nms per session.run, wall clock and process CPU time (median of the rounds, min–max); speed-up = plain median / variant median:');
printTable(['case', 'batch', 'variant', 'wall ms', 'CPU ms', 'speed-up (wall)', 'speed-up (CPU)'], rows);
