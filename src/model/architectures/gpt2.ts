import { FormatError } from '../../errors.js';
import { adaptedLinear, adapterLayout, declareAdapterInputs, linearModules } from '../adapter-ops.js';
import { transpose, type GraphBuilder } from '../onnx-builder.js';
import { addKvOutput } from '../kv-output.js';
import { addSamplingHead, type HeadMode } from '../sampling-head.js';
import type { Architecture, BiasVector, Gpt2Config, RowParams, WeightSource } from './architecture.js';

const OPSET = 20; // Gelu with approximate='tanh' (= HF gelu_new) arrived in opset 20.

function parseConfig(raw: Record<string, unknown>): Gpt2Config {
  const act = raw.activation_function ?? 'gelu_new';
  if (act !== 'gelu_new') throw new FormatError('unsupported_architecture', `unsupported activation_function '${String(act)}' (supported: gelu_new)`);
  if (raw.scale_attn_by_inverse_layer_idx || raw.reorder_and_upcast_attn) {
    throw new FormatError('unsupported_architecture', 'scale_attn_by_inverse_layer_idx and reorder_and_upcast_attn are not supported');
  }
  const hidden = Number(raw.n_embd);
  const heads = Number(raw.n_head);
  if (!(hidden > 0 && heads > 0 && hidden % heads === 0)) throw new FormatError('invalid_config', 'n_embd must be a positive multiple of n_head');
  return {
    modelType: 'gpt2',
    vocabSize: Number(raw.vocab_size),
    nPositions: Number(raw.n_positions),
    hidden,
    layers: Number(raw.n_layer),
    heads,
    kvHeads: heads,
    headDim: hidden / heads,
    inner: raw.n_inner ? Number(raw.n_inner) : 4 * hidden,
    layerNormEps: Number(raw.layer_norm_epsilon ?? 1e-5),
    eosTokenId: Number(raw.eos_token_id ?? 0),
  };
}

/** The bias vectors of the model, in HF names: BitFit replaces exactly these, per row. */
function biases(c: Gpt2Config): BiasVector[] {
  const out: BiasVector[] = [];
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    out.push(
      { name: `${p}.ln_1.bias`, size: c.hidden, inNorm: true },
      { name: `${p}.attn.c_attn.bias`, size: 3 * c.hidden },
      { name: `${p}.attn.c_proj.bias`, size: c.hidden },
      { name: `${p}.ln_2.bias`, size: c.hidden, inNorm: true },
      { name: `${p}.mlp.c_fc.bias`, size: c.inner },
      { name: `${p}.mlp.c_proj.bias`, size: c.hidden },
    );
  }
  out.push({ name: 'transformer.ln_f.bias', size: c.hidden, inNorm: true });
  return out;
}

function weightShapes(c: Gpt2Config): Map<string, number[]> {
  const w = new Map<string, number[]>([
    ['transformer.wte.weight', [c.vocabSize, c.hidden]],
    ['transformer.wpe.weight', [c.nPositions, c.hidden]],
    ['transformer.ln_f.weight', [c.hidden]],
  ]);
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    w.set(`${p}.ln_1.weight`, [c.hidden]);
    w.set(`${p}.attn.c_attn.weight`, [c.hidden, 3 * c.hidden]);
    w.set(`${p}.attn.c_proj.weight`, [c.hidden, c.hidden]);
    w.set(`${p}.ln_2.weight`, [c.hidden]);
    w.set(`${p}.mlp.c_fc.weight`, [c.hidden, c.inner]);
    w.set(`${p}.mlp.c_proj.weight`, [c.inner, c.hidden]);
  }
  for (const { name, size } of biases(c)) w.set(name, [size]);
  return w;
}

export const gpt2: Architecture<Gpt2Config> = {
  graphVersion: 'gpt2-v10',
  parseConfig,
  // Some exports prefix names with `transformer.`, others do not; normalise to the prefixed form.
  canonicalName: (name) => (name.startsWith('transformer.') || name.startsWith('lm_head') ? name : `transformer.${name}`),
  weightShapes,
  biases,
  embedding: 'transformer.wte.weight',
  build: buildGpt2Graph,
};

/**
 * The graph's contract with the executor. Everything that varies per batch row comes in as an input,
 * so one frozen graph serves every adapter kind:
 * - `inputs_embeds` [B, S, D]: token embeddings looked up on the host, or soft-prompt rows (prompt
 *   tuning, P-tuning). Host lookup costs one 1 KB copy per token and lets any row start with
 *   virtual tokens, without a second graph.
 * - `position_ids` [B, S]: explicit per row, since virtual tokens shift the real tokens' positions.
 * - `attn_bias` [B, 1, S, T] (T = P + S): additive mask, 0 or -1e9. It encodes causality, padding and
 *   ragged per-row pasts, and covers a prefix adapter's key/value prefix.
 * - `past_key_l` and `past_value_l`, both [B, H, P, hd]: the KV cache, or a prefix adapter's prefix
 *   as initial past. Keys are stored like values, a column being hd contiguous floats, so the host
 *   appends a step's keys with one short copy per row and head (keys stored [B, H, hd, P] took one
 *   scattered write per float, a cache miss each in a large batch). The scores over the cache are
 *   computed as (K·qᵀ)ᵀ, with the cache as the MatMul's left operand, read as it lies; only q and the
 *   small scores are transposed. As q·Kᵀ, ONNX Runtime folded the q scaling into the MatMul
 *   (FusedMatMul, alpha 1/√hd) and MLAS, its CPU GEMM, then transposed and packed every row's and
 *   head's past keys into a buffer on each step: it skips packing only for one row or one column
 *   with alpha 1 (sgemm.cpp, x86-64). Now the scaling stays a Mul on q, and a decode step (one query
 *   per row: N = 1) runs a plain dot product per key. Measured whole worker steps, this graph
 *   against the one before, one thread (bench/forward.ts, fifth pass; bench/results/issue13.md):
 *   1.2× at batch 32, 1.1× at batch 64, the same at batch 1. No Transpose of the cache is left for a
 *   provider to fuse or copy. The new keys are the left operand of their scores too, so one
 *   Transpose of the joined scores serves both parts.
 * - one input per bias vector, named as in the checkpoint, [R, 1, n] with R = 1 (broadcast, the base
 *   model's values) or R = B (per-row values, for BitFit rows). The linear layers' biases are fed
 *   absolute (no extra Add); the LayerNorms' as each row's difference from the checkpoint's bias,
 *   which sits inside LayerNormalization (see layerNorm). In the base graph (`rows` 'none',
 *   src/model/graph-cache.ts) they are the checkpoint's constants instead, and the adapter inputs
 *   below are absent.
 * - five packed per-row LoRA/IA3 inputs and the bool `lora_ia3_rows` that picks the body with or
 *   without their ops (src/model/adapter-ops.ts).
 * - `logit_index` [N]: rows of the flattened [B*S] hidden states that need logits. The LM head is a
 *   quarter of the FLOPs per token; prefill of a generate request needs it at one position only.
 * Outputs: the sampling head's (src/model/sampling-head.ts: `logits` [N, V] in 'host' mode), and only this step's keys/values,
 * [B, H, S, hd] per layer, packed in one `new_kv` (src/model/kv-output.ts). Attention reads past and new keys separately and joins the scores
 * ([B, H, S, P+S], small) instead of concatenating the cache: the cache is read once per step and
 * never copied inside the graph, and the host appends S columns to its own buffer.
 *
 * Ops per step count at small batches: ONNX Runtime spends 0.5–0.9 µs dispatching each here (ad
 * hoc), and a decode step of one row takes 1–2 ms. So q, k and v come out of one Reshape, Transpose
 * and Split, the [P, S] split of the scores is computed once for all layers, and the base graph's
 * LayerNorms take their biases inside the op: 145 ops after ONNX Runtime's optimiser, from 178
 * (gpt2-v9; bench/graph-ops.ts).
 *
 * Plain ONNX ops rather than com.microsoft contrib ops, so the same graph runs on the CPU and WebGPU
 * providers. ORT's optimiser (level 'all') keeps LayerNormalization as one op and turns Gelu into
 * FastGelu with the bias; the MatMul+Add pairs stay apart because their biases are inputs (per-row
 * BitFit), not initializers — the price of one frozen graph for every adapter kind. At 256 wide a
 * step of one row is far too narrow to fill the cores: batching across tasks matters far more
 * than op fusion (bench/fused-ops.ts measured the contrib ops).
 */
function buildGpt2Graph(c: Gpt2Config, w: WeightSource, g: GraphBuilder, rows: RowParams, head: HeadMode): number {
  const W = (name: string) => g.weight(name, w.shape(name)!, w.read(name));
  // The base graph's norm biases live inside LayerNormalization (see layerNorm): no constant for them here.
  const bias = new Map(biases(c).filter((b) => rows !== 'none' || !b.inNorm).map(({ name, size }) => [name, rows === 'none' ? W(name) : g.input(name, 'float', ['bias_rows', 1, size])]));

  const embeds = g.input('inputs_embeds', 'float', ['batch', 'seq', c.hidden]);
  const positions = g.input('position_ids', 'int64', ['batch', 'seq']);
  const attnBias = g.input('attn_bias', 'float', ['batch', 1, 'seq', 'total']);
  const logitIndex = g.input('logit_index', 'int64', ['n_logits']);
  const pastK: string[] = [];
  const pastV: string[] = [];
  for (let l = 0; l < c.layers; l++) {
    pastK.push(g.input(`past_key_${l}`, 'float', ['batch', c.heads, 'past', c.headDim]));
    pastV.push(g.input(`past_value_${l}`, 'float', ['batch', c.heads, 'past', c.headDim]));
  }

  const qkvHeadsShape = g.ints('shape_qkv_heads', [0, 0, 3 * c.heads, c.headDim]);
  const mergedShape = g.ints('shape_merged', [0, 0, c.hidden]);
  const flatShape = g.ints('shape_flat', [-1, c.hidden]);
  // Scaling q by 1/sqrt(hd) before QK^T is exact for a power-of-two head size and saves a pass over the scores.
  const qScale = g.scalar('q_scale', 1 / Math.sqrt(c.headDim));
  // [P, S]: the widths of the past and new columns of the scores, the same in every layer.
  const pastAndNew = g.one('Concat', [g.one('Shape', [pastK[0]], { start: 2, end: 3 }), g.one('Shape', [embeds], { start: 1, end: 2 })], { axis: 0 });
  const transposeLast2 = (x: string) => g.one('Transpose', [x], { perm: [0, 1, 3, 2] });

  const layerNorm = (x: string, prefix: string) => {
    // The checkpoint's bias goes inside LayerNormalization in both graphs; the full graph then adds
    // its per-row input, each row's difference from that bias (zeros but for BitFit rows). Both
    // graphs thus give a row without BitFit the same numbers bit for bit, so that its result does
    // not depend on which graph its batch ran on, and the base graph saves an Add per norm.
    const baseBias = g.weight(`${prefix}.bias.in_norm`, [c.hidden], w.read(`${prefix}.bias`));
    const normed = g.one('LayerNormalization', [x, W(`${prefix}.weight`), baseBias], { axis: -1, epsilon: { float: c.layerNormEps } });
    return rows === 'none' ? normed : g.one('Add', [normed, bias.get(`${prefix}.bias`)!]);
  };
  const layout = adapterLayout(linearModules(c));
  const adapterInputs = rows === 'lora-ia3' ? declareAdapterInputs(g, layout) : null;
  const linear = (x: string, prefix: string) =>
    adapterInputs
      ? adaptedLinear(g, x, adapterInputs.get(prefix)!, W(`${prefix}.weight`), bias.get(`${prefix}.bias`)!)
      : g.one('Add', [g.one('MatMul', [x, W(`${prefix}.weight`)]), bias.get(`${prefix}.bias`)!]);

  const newKv: [string, string][] = [];
  let x = g.one('Add', [embeds, g.one('Gather', [W('transformer.wpe.weight'), positions], { axis: 0 })]);
  for (let l = 0; l < c.layers; l++) {
    const p = `transformer.h.${l}`;
    const qkv = linear(layerNorm(x, `${p}.ln_1`), `${p}.attn.c_attn`); // [B, S, 3D]: q, k, v heads side by side
    // q, k and v heads through one Reshape, Transpose and Split (they took a Split, three Reshapes and three Transposes).
    const qkvHeads = g.one('Transpose', [g.one('Reshape', [qkv, qkvHeadsShape])], { perm: [0, 2, 1, 3] });
    const [q, kNew, vNew] = g.op('Split', [qkvHeads], { axis: 1, num_outputs: 3 }, 3); // each [B, H, S, hd]
    newKv.push([kNew, vNew]);
    // Scores transposed, [B, H, P+S, S]: K·qᵀ over the cache (read as it lies: see the design note)
    // and over the new keys, joined, then one Transpose of the small result.
    const qT = transposeLast2(g.one('Mul', [q, qScale])); // [B, H, hd, S]
    const scoresT = g.one('Concat', [g.one('MatMul', [pastK[l], qT]), g.one('MatMul', [kNew, qT])], { axis: 2 });
    const probs = g.one('Softmax', [g.one('Add', [transposeLast2(scoresT), attnBias])], { axis: -1 }); // [B, H, S, P+S]
    const [probsPast, probsNew] = g.op('Split', [probs, pastAndNew], { axis: 3 }, 2);
    const ctx = g.one('Add', [g.one('MatMul', [probsPast, pastV[l]]), g.one('MatMul', [probsNew, vNew])]); // [B, H, S, hd]
    const merged = g.one('Reshape', [g.one('Transpose', [ctx], { perm: [0, 2, 1, 3] }), mergedShape]);
    x = g.one('Add', [x, linear(merged, `${p}.attn.c_proj`)]);
    const hidden = g.one('Gelu', [linear(layerNorm(x, `${p}.ln_2`), `${p}.mlp.c_fc`)], { approximate: 'tanh' });
    x = g.one('Add', [x, linear(hidden, `${p}.mlp.c_proj`)]);
  }
  addKvOutput(g, newKv, c.heads, c.headDim);
  const pick = (v: string) => g.one('Gather', [g.one('Reshape', [v, flatShape]), logitIndex], { axis: 0 }); // [N, D]
  // The base graph picks the positions that need logits before the final norm, which then normalises
  // N rows rather than B·S (a prefill needs one position per row), and no residual Add feeds it
  // directly: ONNX Runtime fused that pair into SkipLayerNormalization, which rounds differently,
  // in the base graph but not in the full graph (whose Add takes a per-row input; the bit-for-bit
  // test in test/executor/prefill.test.ts caught it). The full graph normalises
  // first, since its per-row bias inputs are laid out by batch row; LayerNormalization treats each
  // row alone, so both give the same bits.
  const picked = rows === 'none' ? layerNorm(pick(x), 'transformer.ln_f') : pick(layerNorm(x, 'transformer.ln_f'));
  const lmHead = g.weight('lm_head_t', [c.hidden, c.vocabSize], transpose(w.read('transformer.wte.weight'), c.vocabSize, c.hidden)); // tied to wte
  addSamplingHead(g, picked, lmHead, c.vocabSize, head);
  return OPSET;
}
