import type ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import type { LayerKv } from './kv-batch.js';
import type { FeedContext } from './model-constants.js';
import type { PrefillItem } from './prefill.js';

/** Keys [H, hd, n] and values [H, n, hd] per layer (H: key/value heads): what precedes a row's own tokens. */
export interface PastKv {
  n: number;
  layers: LayerKv[];
}

/** Bytes of an n-token past: keys and values of every layer, float32. */
export function pastKvBytes(c: Pick<ModelConfig, 'layers' | 'kvHeads' | 'headDim'>, n: number): number {
  return n * c.layers * 2 * c.kvHeads * c.headDim * 4;
}

/**
 * The keys/values that adapters put before a row's tokens, kept once per adapter version (the adapter
 * key names one content version, so a hot swap gets a new key and never meets the old KV).
 * - prompt (prompt tuning, P-tuning): under causal attention a soft prompt does not depend on what
 *   follows it. The first row of an adapter prefills its soft prompt before its tokens as always;
 *   that run's first n keys/values columns of the row are the soft prompt's, and are kept (no extra
 *   run). Later rows start after them, as after a prefix (positions n.., PEFT's too).
 * - prefix: PEFT's [n, L·2·KVD] rows, laid out once in the cache's layout instead of per request.
 * Dropped with the adapter when the scheduler forgets its key; and, least recently used first, when
 * the held bytes pass `maxBytes` (a worker may hold hundreds of adapters: a dropped soft prompt is
 * simply prefilled again, a dropped prefix laid out again).
 */
export class PastKvCache {
  /** In use order, oldest first. */
  private readonly held = new Map<string, PastKv>();
  private heldBytes = 0;
  /** Soft-prompt rows that started after kept KV (hits) or prefilled their soft prompt (misses), cumulative. */
  hits = 0;
  misses = 0;

  /** `promptKv` false: soft prompts go before the tokens in every prefill, as before (benchmarks compare both). */
  constructor(
    private readonly ctx: FeedContext,
    readonly promptKv: boolean,
    private readonly maxBytes = 256 * 1024 * 1024,
  ) {}

  get size(): number {
    return this.held.size;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  forget(key: string): void {
    const past = this.held.get(key);
    if (!past) return;
    this.held.delete(key);
    this.heldBytes -= pastKvBytes(this.ctx.base.config, past.n);
  }

  /**
   * The past a new row of `adapter` starts after, or undefined where it has none; a prefix is laid
   * out here on first use. A soft-prompt row counts as a hit (it starts after the kept KV) or a miss.
   */
  get(adapter: AdapterTensors | null): PastKv | undefined {
    if (adapter?.kind === 'prompt') {
      if (!this.promptKv) return undefined;
      const past = this.touch(adapter.key);
      if (past) this.hits++;
      else this.misses++;
      return past;
    }
    if (adapter?.kind !== 'prefix') return undefined;
    return this.touch(adapter.key) ?? this.hold(adapter.key, prefixPast(this.ctx.base.config, adapter));
  }

  /** The entry, moved to the most recently used end. */
  private touch(key: string): PastKv | undefined {
    const past = this.held.get(key);
    if (past) {
      this.held.delete(key);
      this.held.set(key, past);
    }
    return past;
  }

  private hold(key: string, past: PastKv): PastKv {
    this.held.set(key, past);
    this.heldBytes += pastKvBytes(this.ctx.base.config, past.n);
    for (const old of this.held.keys()) {
      if (this.heldBytes <= this.maxBytes) break;
      this.forget(old);
    }
    return past;
  }

  /** After a prefill run of `items` (padded to S): keeps the KV of each soft prompt that a row fed and none is held for. */
  keep(items: PrefillItem[], out: ort.InferenceSession.OnnxValueMapType, S: number): void {
    if (!this.promptKv) return;
    items.forEach((it, r) => {
      const a = it.adapter;
      if (a?.kind === 'prompt' && !it.past && !this.held.has(a.key)) this.hold(a.key, rowPast(this.ctx.base.config, out, S, r, a.virtualTokens));
    });
  }
}

/** Row `r`'s first `n` columns of a run's new keys [B, H, hd, S] and values [B, H, S, hd], copied out. */
function rowPast(c: ModelConfig, out: ort.InferenceSession.OnnxValueMapType, S: number, r: number, n: number): PastKv {
  const { kvHeads: H, headDim: hd } = c;
  const layers: LayerKv[] = [];
  for (let l = 0; l < c.layers; l++) {
    const srcK = out[`new_key_${l}`].data as Float32Array;
    const srcV = out[`new_value_${l}`].data as Float32Array;
    const keys = new Float32Array(H * hd * n);
    const values = new Float32Array(H * n * hd);
    for (let h = 0; h < H; h++) {
      const bh = r * H + h;
      values.set(srcV.subarray(bh * S * hd, (bh * S + n) * hd), h * n * hd);
      for (let d = 0; d < hd; d++) keys.set(srcK.subarray((bh * hd + d) * S, (bh * hd + d) * S + n), (h * hd + d) * n);
    }
    layers.push({ keys, values });
  }
  return { n, layers };
}

/** PEFT's prefix layout: E[t, (2l)·KVD + h·hd + d] is the key, E[t, (2l+1)·KVD + h·hd + d] the value. */
function prefixPast(c: ModelConfig, a: AdapterTensors): PastKv {
  const { kvHeads: H, headDim: hd, layers: L } = c;
  const KVD = H * hd;
  const n = a.virtualTokens;
  const E = a.embeddings!;
  const stride = 2 * L * KVD;
  const layers: LayerKv[] = [];
  for (let l = 0; l < L; l++) {
    const keys = new Float32Array(H * hd * n);
    const values = new Float32Array(H * n * hd);
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < n; t++) {
        const src = t * stride + h * hd;
        values.set(E.subarray(src + (2 * l + 1) * KVD, src + (2 * l + 1) * KVD + hd), (h * n + t) * hd);
        for (let d = 0; d < hd; d++) keys[(h * hd + d) * n + t] = E[src + 2 * l * KVD + d];
      }
    }
    layers.push({ keys, values });
  }
  return { n, layers };
}
