import type ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import type { LayerKv } from './kv-batch.js';
import type { FeedContext } from './model-constants.js';
import { prefillFeeds } from './prefill.js';

/** Keys [H, hd, n] and values [H, n, hd] per layer (H: key/value heads): what precedes a row's own tokens. */
export interface PastKv {
  n: number;
  layers: LayerKv[];
}

export type Run = (feeds: Record<string, ort.Tensor>) => Promise<ort.InferenceSession.OnnxValueMapType>;

/** Bytes of an n-token past: keys and values of every layer, float32. */
export function pastKvBytes(c: Pick<ModelConfig, 'layers' | 'kvHeads' | 'headDim'>, n: number): number {
  return n * c.layers * 2 * c.kvHeads * c.headDim * 4;
}

/**
 * The keys/values that adapters put before a row's tokens, computed once per adapter version (the
 * adapter key names one content version, so a hot swap gets a new key and never meets the old KV).
 * - prompt (prompt tuning, P-tuning): under causal attention the soft prompt does not depend on what
 *   follows, so one forward run over it alone (positions 0..n-1, no past, no logits) gives the same
 *   keys/values as every request would compute again. Requests then start after it, as after a prefix.
 * - prefix: PEFT's [n, L·2·KVD] rows, laid out once in the cache's layout instead of per request.
 * Dropped with the adapter when the scheduler forgets its key.
 */
export class PastKvCache {
  private readonly held = new Map<string, PastKv>();
  /** Rows that found a soft prompt's KV ready, and runs that had to compute one (cumulative). */
  hits = 0;
  misses = 0;

  /** `promptKv` false: soft prompts go before the tokens in every prefill, as before (benchmarks compare both). */
  constructor(
    private readonly ctx: FeedContext,
    readonly promptKv: boolean,
  ) {}

  get size(): number {
    return this.held.size;
  }

  get bytes(): number {
    let n = 0;
    for (const p of this.held.values()) n += pastKvBytes(this.ctx.base.config, p.n);
    return n;
  }

  forget(key: string): void {
    this.held.delete(key);
  }

  /**
   * The past a row of `adapter` starts after, or undefined where it has none. A soft prompt's KV must
   * have been computed by prepare() first; a prefix is laid out here on first use.
   */
  get(adapter: AdapterTensors | null): PastKv | undefined {
    if (adapter?.kind === 'prompt') return this.promptKv ? this.held.get(adapter.key) : undefined;
    if (adapter?.kind !== 'prefix') return undefined;
    let past = this.held.get(adapter.key);
    if (!past) {
      past = prefixPast(this.ctx.base.config, adapter);
      this.held.set(adapter.key, past);
    }
    return past;
  }

  /**
   * Computes the KV of the soft prompts among `rows` (one adapter per row that will start after it)
   * that is not held yet: one run over all of them, padded. Counts a hit per row whose KV was ready
   * and a miss per soft prompt computed. Returns this step's counts.
   */
  async prepare(rows: (AdapterTensors | null)[], run: Run): Promise<{ hits: number; misses: number }> {
    const counts = { hits: 0, misses: 0 };
    if (!this.promptKv) return counts;
    const missing = new Map<string, AdapterTensors>();
    for (const a of rows) {
      if (a?.kind !== 'prompt') continue;
      if (this.held.has(a.key) || missing.has(a.key)) counts.hits++;
      else missing.set(a.key, a);
    }
    counts.misses = missing.size;
    if (missing.size > 0) {
      const adapters = [...missing.values()];
      // Only the soft prompt: prefillFeeds puts it at positions 0..n-1; no logits are wanted.
      const layout = prefillFeeds(this.ctx, adapters.map((adapter) => ({ adapter, tokens: [], logitAt: [] })));
      const out = await run(layout.feeds);
      adapters.forEach((a, r) => this.held.set(a.key, rowPast(this.ctx.base.config, out, layout.S, r, a.virtualTokens)));
    }
    this.hits += counts.hits;
    this.misses += counts.misses;
    return counts;
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
