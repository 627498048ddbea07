import type ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import { fetchedKv } from '../model/kv-output.js';
import type { AdapterTensors } from '../protocol.js';
import type { LayerKv } from './kv-batch.js';
import type { FeedContext } from './model-constants.js';
import { prefillFeeds, prefixPast, type PrefillItem } from './prefill.js';

/** Keys and values [H, n, hd] per layer (H: key/value heads): what precedes a row's own tokens. */
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
 * The keys/values that adapters put before a row's tokens, kept once per adapter version (the adapter
 * key names one content version, so a hot swap gets a new key and never meets the old KV).
 * - prompt (prompt tuning, P-tuning): under causal attention a soft prompt does not depend on what
 *   follows it, so one run over the soft prompt alone (positions 0..n-1, no past, no logits) gives
 *   the keys/values every request would compute again. Rows start after them, as after a prefix
 *   (real tokens at positions n.., PEFT's too). The first row of an adapter version starts after
 *   them too, rather than feeding its soft prompt in its own run and keeping those columns: then a
 *   request gives the same numbers whether it came first or later (a hit and a miss would
 *   otherwise differ by float rounding, ~1e-5 in a log-probability).
 * - prefix: PEFT's [n, L·2·KVD] rows, laid out once in the cache's layout instead of per request.
 * Dropped with the adapter when the scheduler forgets its key; and, least recently used first, when
 * the held bytes pass `maxBytes` (a worker may hold hundreds of adapters: a dropped soft prompt's KV
 * is computed again on its next use, a dropped prefix laid out again; a row whose past was dropped
 * within its own step feeds its soft prompt before its tokens, as with the cache off).
 */
export class PastKvCache {
  /** In use order, oldest first. */
  private readonly held = new Map<string, PastKv>();
  private heldBytes = 0;
  /** Soft-prompt rows whose KV was held before their step (hits) or computed in it (misses), cumulative. */
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
   * The past a new row of `adapter` starts after, or undefined where it has none. A soft prompt's KV
   * must have been computed by prepare() first; a prefix is laid out here on first use.
   */
  get(adapter: AdapterTensors | null): PastKv | undefined {
    if (adapter?.kind === 'prompt') return this.promptKv ? this.touch(adapter.key) : undefined;
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

  /**
   * Computes the KV of the soft prompts of `rows` (the adapters of the rows that will start after
   * it) that is not held: one run over those soft prompts alone, padded. Counts each row a hit (held
   * before) or a miss (computed here).
   */
  async prepare(rows: (AdapterTensors | null)[], run: Run): Promise<void> {
    if (!this.promptKv) return;
    const missing = new Map<string, AdapterTensors>();
    for (const a of rows) {
      if (a?.kind !== 'prompt') continue;
      if (this.held.has(a.key)) this.hits++;
      else {
        this.misses++;
        missing.set(a.key, a);
      }
    }
    if (missing.size === 0) return;
    const items: PrefillItem[] = [...missing.values()].map((adapter) => ({ adapter, tokens: [], logitAt: [] }));
    const layout = prefillFeeds(this.ctx, items);
    const out = await run(layout.feeds);
    items.forEach((it, r) => this.hold(it.adapter!.key, rowPast(this.ctx.base.config, out, layout.S, r, it.adapter!.virtualTokens)));
  }
}

/** Row `r`'s first `n` columns of a run's new keys and values [B, H, S, hd], copied out. */
function rowPast(c: ModelConfig, out: ort.InferenceSession.OnnxValueMapType, S: number, r: number, n: number): PastKv {
  const { kvHeads: H, headDim: hd } = c;
  return {
    n,
    layers: fetchedKv(out, c.layers).map(({ keys: srcK, values: srcV }) => {
      const keys = new Float32Array(H * n * hd);
      const values = new Float32Array(H * n * hd);
      for (let h = 0; h < H; h++) {
        const bh = r * H + h;
        keys.set(srcK.subarray(bh * S * hd, (bh * S + n) * hd), h * n * hd);
        values.set(srcV.subarray(bh * S * hd, (bh * S + n) * hd), h * n * hd);
      }
      return { keys, values };
    }),
  };
}
