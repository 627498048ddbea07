import type { GraphBuilder } from '../onnx-builder.js';
import type { HeadMode } from '../sampling-head.js';

/** What every architecture's config gives the rest of the server: the executor sizes everything from these. */
export interface CommonConfig {
  modelType: string;
  vocabSize: number;
  /** Longest context served: max positions, or a sliding window when shorter. */
  nPositions: number;
  hidden: number;
  layers: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads: the KV cache and prefix adapters are sized by these (= heads without GQA). */
  kvHeads: number;
  headDim: number;
  eosTokenId: number;
}

export interface Gpt2Config extends CommonConfig {
  modelType: 'gpt2';
  inner: number;
  layerNormEps: number;
}

export interface RopeScaling {
  type: 'linear' | 'llama3';
  factor: number;
  /** llama3 only. */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositions?: number;
}

export interface LlamaConfig extends CommonConfig {
  modelType: 'llama' | 'mistral' | 'qwen2';
  inner: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  /** q/k/v (and o, for llama) biases. */
  attentionBias: boolean;
  /** o_proj bias: llama's attention_bias covers it, qwen2's q/k/v biases do not. */
  outputBias: boolean;
  mlpBias: boolean;
}

export type ModelConfig = Gpt2Config | LlamaConfig;

/**
 * What a graph body takes per row beyond embeddings, positions, mask and KV:
 * - 'lora-ia3': a bias input per bias vector (BitFit; a norm's as the row's difference from the
 *   checkpoint's: see BiasVector) and the packed LoRA/IA3 inputs;
 * - 'bias': a bias input per bias vector, as above;
 * - 'none': the checkpoint's biases as constants (the base graph, for runs whose rows carry no
 *   BitFit, LoRA or IA3: fewer inputs, no If), computed in the same order as the per-row biases so
 *   that both graphs give the same logits bit for bit.
 */
export type RowParams = 'lora-ia3' | 'bias' | 'none';

/**
 * A bias vector of the model. `inNorm`: a normalisation's bias, which the graph adds inside the
 * norm op with the checkpoint's value; the full graph's per-row input for it then carries each
 * row's difference from that value (zeros for rows without BitFit), so that both graphs round alike
 * (src/executor/model-constants.ts feeds it).
 */
export interface BiasVector {
  name: string;
  size: number;
  inNorm?: boolean;
}

/** Reads a checkpoint's tensors by their canonical names, one at a time, as float32. */
export interface WeightSource {
  shape(name: string): number[] | undefined;
  read(name: string): Float32Array;
}

/**
 * One model family: how its config.json reads, which tensors it needs, and how they become the
 * graph. Every builder keeps the same I/O contract (see gpt2.ts), so the executor, scheduler and
 * KV cache never ask which architecture they serve.
 */
export interface Architecture<C extends ModelConfig = ModelConfig> {
  /** Keys the graph cache: bump when the graph changes. */
  graphVersion: string;
  /** Throws FormatError naming any field or value it cannot serve. */
  parseConfig(raw: Record<string, unknown>): C;
  /** A checkpoint's tensor name in the form this architecture uses (exports differ in prefixes). */
  canonicalName(name: string): string;
  /** Every tensor the graph reads, with its shape (bias vectors included). */
  weightShapes(c: C): Map<string, number[]>;
  /** The bias vectors BitFit may replace per row, by HF name; empty when the model has none. */
  biases(c: C): BiasVector[];
  /** The token embedding table [V, D], looked up on the host. */
  embedding: string;
  /**
   * Adds the whole forward pass to `g`, streaming weights from `w`; returns the opset it needs.
   * `rows`: what the body takes per row (RowParams); with 'lora-ia3' every linear layer goes through
   * adaptedLinear (src/model/adapter-ops.ts).
   * `head`: the graph ends with src/model/sampling-head.ts in that mode.
   */
  build(c: C, w: WeightSource, g: GraphBuilder, rows: RowParams, head: HeadMode): number;
}
