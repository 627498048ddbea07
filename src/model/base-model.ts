import { statSync } from 'node:fs';
import { Tokenizer, type TokenizerOptions } from '../tokenizer/tokenizer.js';
import type { BaseTensors } from '../executor/model-constants.js';
import { biasNames, loadCheckpoint, type ModelConfig } from './checkpoint.js';
import { cachedGraphPath } from './graph-cache.js';

/** The frozen base model as the main thread holds it: config, tokenizer, graph file and shared tensors. */
export interface BaseModel {
  dir: string;
  config: ModelConfig;
  tokenizer: Tokenizer;
  hash: string;
  graphPath: string;
  /**
   * The base graph (src/model/graph-cache.ts), which workers run beside the full one for rows without
   * BitFit, LoRA or IA3; null from graph-cache.ts's BASE_GRAPH_BELOW_BYTES up, where it would not pay.
   */
  baseGraphPath: string | null;
  graphBuilt: boolean;
  /** In SharedArrayBuffers: the worker reads them without a copy. */
  tensors: BaseTensors;
}

/** Above this, workers share the mapped weights instead of each prepacking its own copy. */
const SHARE_WEIGHTS_FROM_BYTES = 1 << 30;

function shared(data: Float32Array): Float32Array {
  const out = new Float32Array(new SharedArrayBuffer(data.byteLength));
  out.set(data);
  return out;
}

export function loadBaseModel(dir: string, cacheDir: string, tokenizerOptions: TokenizerOptions = {}): BaseModel {
  const ckpt = loadCheckpoint(dir);
  const tokenizer = Tokenizer.load(dir, tokenizerOptions);
  if (tokenizer.vocabSize > ckpt.config.vocabSize) {
    throw new Error(`tokenizer has ${tokenizer.vocabSize} tokens but the model only ${ckpt.config.vocabSize}`);
  }
  const { path, basePath, built } = cachedGraphPath(ckpt, cacheDir);
  const weightBytes = statSync(`${path}.data`, { throwIfNoEntry: false })?.size ?? 0;
  const biases: Record<string, Float32Array> = {};
  // Only what the host needs stays on the main thread: the embedding table and the bias vectors.
  for (const { name } of biasNames(ckpt.config)) biases[name] = shared(ckpt.weights.read(name));
  return {
    dir,
    config: ckpt.config,
    tokenizer,
    hash: ckpt.hash,
    graphPath: path,
    baseGraphPath: basePath,
    graphBuilt: built,
    tensors: { config: ckpt.config, wte: shared(ckpt.weights.read(ckpt.arch.embedding)), biases, shareWeights: weightBytes >= SHARE_WEIGHTS_FROM_BYTES },
  };
}
