import { FormatError } from '../../errors.js';
import { adaptedLinear, adapterLayout, declareAdapterInputs, linearModules } from '../adapter-ops.js';
import { transpose, type GraphBuilder } from '../onnx-builder.js';
import { addKvOutput } from '../kv-output.js';
import { addSamplingHead, type HeadMode } from '../sampling-head.js';
import type { Architecture, BiasVector, LlamaConfig, RopeScaling, RowParams, WeightSource } from './architecture.js';

const OPSET = 20;

const invalid = (message: string): never => {
  throw new FormatError('invalid_config', message);
};
const unsupported = (message: string): never => {
  throw new FormatError('unsupported_architecture', message);
};

function positiveInt(raw: Record<string, unknown>, key: string, fallback?: number): number {
  const v = raw[key] ?? fallback;
  if (!Number.isInteger(v) || (v as number) < 1) invalid(`${key} must be a positive integer, got ${JSON.stringify(raw[key])}`);
  return v as number;
}

function positive(raw: Record<string, unknown>, key: string, fallback: number): number {
  const v = raw[key] ?? fallback;
  if (typeof v !== 'number' || !(v > 0)) invalid(`${key} must be a positive number, got ${JSON.stringify(raw[key])}`);
  return v as number;
}

/** `null`, `linear` and `llama3` (HF's rope_init_fn names); any other type is refused by name. */
function parseRopeScaling(raw: unknown): RopeScaling | null {
  if (raw === null || raw === undefined) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) return invalid('rope_scaling must be an object or null');
  const r = raw as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  if (type === 'default') return null;
  if (type !== 'linear' && type !== 'llama3') return unsupported(`unsupported rope_scaling type '${String(type)}' (supported: linear, llama3)`);
  const factor = positive(r, 'factor', NaN);
  if (type === 'linear') return { type, factor };
  return {
    type,
    factor,
    lowFreqFactor: positive(r, 'low_freq_factor', NaN),
    highFreqFactor: positive(r, 'high_freq_factor', NaN),
    originalMaxPositions: positiveInt(r, 'original_max_position_embeddings'),
  };
}

function parseConfig(raw: Record<string, unknown>): LlamaConfig {
  const modelType = raw.model_type as LlamaConfig['modelType'];
  const act = raw.hidden_act ?? 'silu';
  if (act !== 'silu') unsupported(`unsupported hidden_act '${String(act)}' (supported: silu)`);
  const hidden = positiveInt(raw, 'hidden_size');
  const heads = positiveInt(raw, 'num_attention_heads');
  const kvHeads = positiveInt(raw, 'num_key_value_heads', heads);
  if (heads % kvHeads !== 0) invalid(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kvHeads}`);
  const headDim = positiveInt(raw, 'head_dim', hidden / heads);
  if (headDim % 2 !== 0) invalid(`head_dim ${headDim} must be even for rotary embeddings`);
  // Sliding-window attention equals full attention while the context fits the window: serving
  // contexts up to the window (and refusing longer ones, 413) is exact.
  // (HF's configs default sliding_window to 4096 when the key is absent; null turns it off.)
  const windowed = modelType === 'mistral' || (modelType === 'qwen2' && raw.use_sliding_window === true);
  const window = windowed && raw.sliding_window !== null ? positiveInt(raw, 'sliding_window', 4096) : Infinity;
  const attentionBias = modelType === 'qwen2' ? true : modelType === 'llama' && raw.attention_bias === true;
  const eos = Array.isArray(raw.eos_token_id) ? raw.eos_token_id[0] : raw.eos_token_id;
  return {
    modelType,
    vocabSize: positiveInt(raw, 'vocab_size'),
    nPositions: Math.min(positiveInt(raw, 'max_position_embeddings'), window),
    hidden,
    layers: positiveInt(raw, 'num_hidden_layers'),
    heads,
    kvHeads,
    headDim,
    eosTokenId: Number(eos ?? 0),
    inner: positiveInt(raw, 'intermediate_size'),
    rmsNormEps: positive(raw, 'rms_norm_eps', 1e-6),
    ropeTheta: positive(raw, 'rope_theta', 10000),
    ropeScaling: parseRopeScaling(raw.rope_scaling),
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    attentionBias,
    // Llama's attention_bias also gives o_proj a bias; Qwen2 has q/k/v biases only.
    outputBias: modelType === 'llama' && attentionBias,
    mlpBias: modelType === 'llama' && raw.mlp_bias === true,
  };
}

const layer = (l: number) => `model.layers.${l}`;

function biases(c: LlamaConfig): BiasVector[] {
  const out: BiasVector[] = [];
  const { hidden: D, heads: H, kvHeads: KVH, headDim: hd, inner: I } = c;
  for (let l = 0; l < c.layers; l++) {
    const p = layer(l);
    if (c.attentionBias) {
      out.push({ name: `${p}.self_attn.q_proj.bias`, size: H * hd }, { name: `${p}.self_attn.k_proj.bias`, size: KVH * hd }, { name: `${p}.self_attn.v_proj.bias`, size: KVH * hd });
    }
    if (c.outputBias) out.push({ name: `${p}.self_attn.o_proj.bias`, size: D });
    if (c.mlpBias) out.push({ name: `${p}.mlp.gate_proj.bias`, size: I }, { name: `${p}.mlp.up_proj.bias`, size: I }, { name: `${p}.mlp.down_proj.bias`, size: D });
  }
  return out;
}

function weightShapes(c: LlamaConfig): Map<string, number[]> {
  const { hidden: D, heads: H, kvHeads: KVH, headDim: hd, inner: I } = c;
  const w = new Map<string, number[]>([
    ['model.embed_tokens.weight', [c.vocabSize, D]],
    ['model.norm.weight', [D]],
  ]);
  if (!c.tieWordEmbeddings) w.set('lm_head.weight', [c.vocabSize, D]);
  for (let l = 0; l < c.layers; l++) {
    const p = layer(l);
    // nn.Linear stores [out, in].
    w.set(`${p}.input_layernorm.weight`, [D]);
    w.set(`${p}.self_attn.q_proj.weight`, [H * hd, D]);
    w.set(`${p}.self_attn.k_proj.weight`, [KVH * hd, D]);
    w.set(`${p}.self_attn.v_proj.weight`, [KVH * hd, D]);
    w.set(`${p}.self_attn.o_proj.weight`, [D, H * hd]);
    w.set(`${p}.post_attention_layernorm.weight`, [D]);
    w.set(`${p}.mlp.gate_proj.weight`, [I, D]);
    w.set(`${p}.mlp.up_proj.weight`, [I, D]);
    w.set(`${p}.mlp.down_proj.weight`, [D, I]);
  }
  for (const { name, size } of biases(c)) w.set(name, [size]);
  return w;
}

/** HF's inverse frequencies, with `linear` or `llama3` scaling applied (float64). */
export function inverseFrequencies(c: LlamaConfig): Float64Array {
  const half = c.headDim / 2;
  const inv = Float64Array.from({ length: half }, (_, i) => 1 / c.ropeTheta ** ((2 * i) / c.headDim));
  const s = c.ropeScaling;
  if (s?.type === 'linear') return inv.map((f) => f / s.factor);
  if (s?.type === 'llama3') {
    const lowWavelen = s.originalMaxPositions! / s.lowFreqFactor!;
    const highWavelen = s.originalMaxPositions! / s.highFreqFactor!;
    return inv.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) return f;
      if (wavelen > lowWavelen) return f / s.factor;
      const smooth = (s.originalMaxPositions! / wavelen - s.lowFreqFactor!) / (s.highFreqFactor! - s.lowFreqFactor!);
      return ((1 - smooth) * f) / s.factor + smooth * f;
    });
  }
  return inv;
}

/**
 * cos and sin tables [positions, hd] for rotate_half RoPE: x·cos + rotate_half(x)·sin, where
 * rotate_half(x) = [-x2, x1]. The graph computes it as x·cos + [x2, x1]·sin', with the sign folded
 * into sin' = [-sin, sin], so the rotation costs a Split, a Concat, two Muls and an Add.
 */
function ropeTables(c: LlamaConfig): { cos: Float32Array; sin: Float32Array } {
  const hd = c.headDim;
  const half = hd / 2;
  const inv = inverseFrequencies(c);
  const cos = new Float32Array(c.nPositions * hd);
  const sin = new Float32Array(c.nPositions * hd);
  for (let p = 0; p < c.nPositions; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * inv[i];
      cos[p * hd + i] = cos[p * hd + half + i] = Math.cos(angle);
      sin[p * hd + i] = -Math.sin(angle);
      sin[p * hd + half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * Llama, Mistral and Qwen2 with the same I/O contract as GPT-2 (see gpt2.ts): inputs_embeds,
 * position_ids, attn_bias, past_key_l and past_value_l
 * [B, KVH, P, hd], one input per bias vector, logit_index and the sampling head's inputs; outputs the sampling head's (src/model/sampling-head.ts) and `new_kv` (src/model/kv-output.ts).
 * - RoPE from position_ids through a Gather of precomputed cos/sin tables. Keys enter the cache
 *   already rotated, so a prefix adapter's keys (fed as past) are used as they are, as PEFT does.
 * - Grouped-query attention without repeating the cache: queries [B, H, S, hd] reshape (no copy) to
 *   [B, KVH, G·S, hd], so one MatMul per key/value head serves its G query heads.
 * - RMSNorm as Pow, ReduceMean, Add, Sqrt, Div, Mul: the pattern ORT fuses into one
 *   SimplifiedLayerNormalization, computed in float32.
 * - Every linear layer goes through `linear`: per-row adapters on linear layers belong there.
 */
function build(c: LlamaConfig, w: WeightSource, g: GraphBuilder, rows: RowParams, headMode: HeadMode): number {
  const { hidden: D, heads: H, kvHeads: KVH, headDim: hd, layers: L } = c;
  const bias = new Map(biases(c).map(({ name, size }) => [name, rows === 'none' ? g.weight(name, [size], w.read(name)) : g.input(name, 'float', ['bias_rows', 1, size])]));
  const embeds = g.input('inputs_embeds', 'float', ['batch', 'seq', D]);
  const positions = g.input('position_ids', 'int64', ['batch', 'seq']);
  const attnBias = g.input('attn_bias', 'float', ['batch', 1, 'seq', 'total']);
  const logitIndex = g.input('logit_index', 'int64', ['n_logits']);
  const pastK: string[] = [];
  const pastV: string[] = [];
  for (let l = 0; l < L; l++) {
    pastK.push(g.input(`past_key_${l}`, 'float', ['batch', KVH, 'past', hd]));
    pastV.push(g.input(`past_value_${l}`, 'float', ['batch', KVH, 'past', hd]));
  }

  const qHeads = g.ints('shape_q_heads', [0, 0, H, hd]);
  const kvHeadsShape = g.ints('shape_kv_heads', [0, 0, KVH, hd]);
  const grouped = g.ints('shape_grouped', [0, KVH, -1, hd]); // [B, H, S, hd] → [B, KVH, G·S, hd]
  const perHead = g.ints('shape_per_head', [0, H, -1, hd]); // and back
  const scoresPerHead = g.ints('shape_scores_per_head', [0, H, -1, 0]); // [B, KVH, G·S, T] → [B, H, S, T]
  const scoresGrouped = g.ints('shape_scores_grouped', [0, KVH, -1, 0]);
  const mergedShape = g.ints('shape_merged', [0, 0, H * hd]);
  const flatShape = g.ints('shape_flat', [-1, D]);
  const qScale = g.scalar('q_scale', 1 / Math.sqrt(hd));
  const two = g.scalar('two', 2);
  const eps = g.scalar('rms_eps', c.rmsNormEps);
  const axisLast = g.ints('axis_last', [3]);
  const axisOne = g.ints('axis_one', [1]);
  const lastDim = g.ints('last_dim', [-1]);
  const bigEnd = g.ints('big_end', [2 ** 31 - 1]);
  const zero = g.ints('zero', [0]);
  const { cos, sin } = ropeTables(c);
  // [B, 1, S, hd]: broadcast over heads.
  const cosB = g.one('Unsqueeze', [g.one('Gather', [g.weight('rope_cos', [c.nPositions, hd], cos), positions], { axis: 0 }), axisOne]);
  const sinB = g.one('Unsqueeze', [g.one('Gather', [g.weight('rope_sin', [c.nPositions, hd], sin), positions], { axis: 0 }), axisOne]);

  const rmsNorm = (x: string, name: string) => {
    const variance = g.one('ReduceMean', [g.one('Pow', [x, two]), lastDim], { keepdims: 1 });
    const normed = g.one('Div', [x, g.one('Sqrt', [g.one('Add', [variance, eps])])]);
    return g.one('Mul', [normed, g.weight(name, [D], w.read(name))]);
  };
  const adapterInputs = rows === 'lora-ia3' ? declareAdapterInputs(g, adapterLayout(linearModules(c))) : null;
  /** x [.., in] · Wᵀ (+ b): the weight is stored [in, out], transposed once here from nn.Linear's [out, in]. */
  const linear = (x: string, prefix: string) => {
    const [out, inDim] = w.shape(`${prefix}.weight`)!;
    const weight = g.weight(`${prefix}.weight`, [inDim, out], transpose(w.read(`${prefix}.weight`), out, inDim));
    const b = bias.get(`${prefix}.bias`) ?? null;
    if (adapterInputs) return adaptedLinear(g, x, adapterInputs.get(prefix)!, weight, b);
    const y = g.one('MatMul', [x, weight]);
    return b ? g.one('Add', [y, b]) : y;
  };
  const rope = (x: string) => {
    const [x1, x2] = g.op('Split', [x], { axis: -1, num_outputs: 2 }, 2);
    return g.one('Add', [g.one('Mul', [x, cosB]), g.one('Mul', [g.one('Concat', [x2, x1], { axis: -1 }), sinB])]);
  };
  const heads = (x: string, shape: string) => g.one('Transpose', [g.one('Reshape', [x, shape])], { perm: [0, 2, 1, 3] });
  // q·Kᵀ through a Transpose that ONNX Runtime's CPU optimiser folds into the MatMul (FusedMatMul transB;
  // ORT registers that fusion for CPU, CUDA, DML and ROCm, so on WebGPU it may copy the past keys: not measured).
  // GPT-2 computes (K·qᵀ)ᵀ instead (see gpt2.ts); here, with G·S queries per key/value head, that form
  // measured no faster (bench/results/issue13-pass5/attention-llama-*-not-adopted.json), so it stays.
  const keysT = (x: string) => g.one('Transpose', [x], { perm: [0, 1, 3, 2] });

  const newKv: [string, string][] = [];
  let x = embeds;
  for (let l = 0; l < L; l++) {
    const p = layer(l);
    const h = rmsNorm(x, `${p}.input_layernorm.weight`);
    const q = rope(heads(linear(h, `${p}.self_attn.q_proj`), qHeads)); // [B, H, S, hd]
    const kNew = rope(heads(linear(h, `${p}.self_attn.k_proj`), kvHeadsShape)); // [B, KVH, S, hd]
    const vNew = heads(linear(h, `${p}.self_attn.v_proj`), kvHeadsShape); // [B, KVH, S, hd]
    newKv.push([kNew, vNew]);
    const qg = g.one('Reshape', [g.one('Mul', [q, qScale]), grouped]);
    const scores = g.one('Concat', [g.one('MatMul', [qg, keysT(pastK[l])]), g.one('MatMul', [qg, keysT(kNew)])], { axis: 3 }); // [B, KVH, G·S, P+S]
    const probs = g.one('Softmax', [g.one('Add', [g.one('Reshape', [scores, scoresPerHead]), attnBias])], { axis: -1 });
    const probsG = g.one('Reshape', [probs, scoresGrouped]);
    const P = g.one('Shape', [pastK[l]], { start: 2, end: 3 });
    const ctx = g.one('Add', [g.one('MatMul', [g.one('Slice', [probsG, zero, P, axisLast]), pastV[l]]), g.one('MatMul', [g.one('Slice', [probsG, P, bigEnd, axisLast]), vNew])]);
    const merged = g.one('Reshape', [g.one('Transpose', [g.one('Reshape', [ctx, perHead])], { perm: [0, 2, 1, 3] }), mergedShape]);
    x = g.one('Add', [x, linear(merged, `${p}.self_attn.o_proj`)]);
    const h2 = rmsNorm(x, `${p}.post_attention_layernorm.weight`);
    const gate = linear(h2, `${p}.mlp.gate_proj`);
    const act = g.one('Mul', [g.one('Mul', [gate, g.one('Sigmoid', [gate])]), linear(h2, `${p}.mlp.up_proj`)]); // SwiGLU: silu(gate) · up
    x = g.one('Add', [x, linear(act, `${p}.mlp.down_proj`)]);
  }
  addKvOutput(g, newKv, KVH, hd);
  const picked = g.one('Gather', [g.one('Reshape', [rmsNorm(x, 'model.norm.weight'), flatShape]), logitIndex], { axis: 0 }); // [N, D]
  const head = c.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const lmHead = g.weight('lm_head_t', [D, c.vocabSize], transpose(w.read(head), c.vocabSize, D));
  addSamplingHead(g, picked, lmHead, c.vocabSize, headMode);
  return OPSET;
}

export const llama: Architecture<LlamaConfig> = {
  graphVersion: 'llama-v8',
  parseConfig,
  canonicalName: (name) => name,
  weightShapes,
  biases,
  embedding: 'model.embed_tokens.weight',
  build,
};
