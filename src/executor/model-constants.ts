import ort from 'onnxruntime-node';
import { biasNames, type ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';

/** What the worker needs of the base model beside the graph: the embedding table and base biases. */
export interface BaseTensors {
  config: ModelConfig;
  wte: Float32Array; // token embedding table [V, D] (the architecture's), shared with the main thread
  biases: Record<string, Float32Array>;
  /**
   * Sessions read the graph's memory-mapped weights in place (ORT prepacking off), so every worker
   * shares one copy; otherwise each session keeps its own prepacked copy (faster GEMMs, its size again).
   */
  shareWeights: boolean;
}

export const NEG = -1e9; // additive mask value: exp(NEG - max) is exactly 0 in float32, and never NaN

export class FeedContext {
  readonly biasList: { name: string; size: number }[];
  /** Broadcast [1, 1, n] tensors of the base biases, reused by every step without a BitFit row. */
  private readonly sharedBias: Record<string, ort.Tensor>;

  constructor(readonly base: BaseTensors) {
    this.biasList = biasNames(base.config);
    // onnxruntime-node refuses tensors over a SharedArrayBuffer ("Invalid argument"): copy once here.
    this.sharedBias = Object.fromEntries(this.biasList.map(({ name, size }) => [name, new ort.Tensor('float32', new Float32Array(base.biases[name]), [1, 1, size])]));
  }

  /** Bias feeds for a run whose rows use `adapters` (row order). */
  biasFeeds(adapters: (AdapterTensors | null)[]): Record<string, ort.Tensor> {
    if (!adapters.some((a) => a?.kind === 'bitfit')) return this.sharedBias;
    const B = adapters.length;
    const feeds: Record<string, ort.Tensor> = {};
    for (const { name, size } of this.biasList) {
      const data = new Float32Array(B * size);
      adapters.forEach((a, r) => data.set(a?.kind === 'bitfit' ? a.biases![name] : this.base.biases[name], r * size));
      feeds[name] = new ort.Tensor('float32', data, [B, 1, size]);
    }
    return feeds;
  }

  embed(out: Float32Array, at: number, token: number): void {
    const D = this.base.config.hidden;
    if (!(token >= 0 && token < this.base.config.vocabSize)) throw new Error(`token id ${token} is outside the vocabulary`);
    out.set(this.base.wte.subarray(token * D, (token + 1) * D), at);
  }
}
