import type { GraphBuilder } from './onnx-builder.js';

/**
 * A step's new keys and values leave the graph as one output, `new_kv` [2L·B, KVH, S, hd]: block 2l
 * holds layer l's keys [B, KVH, S, hd], block 2l + 1 its values. onnxruntime-node turns every
 * fetched output into a new JS tensor, about 5 µs apiece here (ad hoc), so the demo model's 8 cost a
 * decode step some 40 µs (2–3 % of a batch-1 step here), a 22-layer model's 44 some 240 µs; the
 * Concat that packs them copies only this step's columns.
 */
export const KV_OUTPUT = 'new_kv';

/** Inputs of one Concat: with its output, WebGPU's limit of 16 storage buffers per shader. */
const MAX_CONCAT = 15;

/** Adds `new_kv` from each layer's [keys, values], both [B, KVH, S, hd]. */
export function addKvOutput(g: GraphBuilder, layers: [string, string][], kvHeads: number, headDim: number): void {
  const concat = (parts: string[]): string => {
    if (parts.length <= MAX_CONCAT) return g.one('Concat', parts, { axis: 0 });
    const groups: string[] = [];
    for (let i = 0; i < parts.length; i += MAX_CONCAT) groups.push(concat(parts.slice(i, i + MAX_CONCAT)));
    return concat(groups);
  };
  g.output(concat(layers.flat()), KV_OUTPUT, ['kv_rows', kvHeads, 'seq', headDim]);
}

/** Layer `l`'s keys and values in a fetched `new_kv` of `layers` layers: views, no copy. */
export function layerKv(data: Float32Array, layers: number, l: number): { keys: Float32Array; values: Float32Array } {
  const block = data.length / (2 * layers);
  return { keys: data.subarray(2 * l * block, (2 * l + 1) * block), values: data.subarray((2 * l + 1) * block, (2 * l + 2) * block) };
}

/** Every layer's keys and values in a run's fetched `new_kv`: views, no copy. */
export function fetchedKv(out: Record<string, { data: unknown }>, layers: number): { keys: Float32Array; values: Float32Array }[] {
  const data = out[KV_OUTPUT].data as Float32Array;
  return Array.from({ length: layers }, (_, l) => layerKv(data, layers, l));
}
