import ort from 'onnxruntime-node';
import { ADAPTED_FLAG, ADAPTER_INPUTS, adapterLayout, linearModules, type AdapterLayout } from '../model/adapter-ops.js';
import { biasNames, type ModelConfig } from '../model/checkpoint.js';
import type { BiasVector } from '../model/architectures/architecture.js';
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

/** Adapter kinds that change the model's parameters per row: only the full graph runs them. */
const PER_ROW_PARAMETERS = new Set<AdapterTensors['kind']>(['bitfit', 'lora', 'ia3']);

/** Whether a run over rows with these adapters needs the full graph (else the base graph serves it). */
export function needsFullGraph(adapters: (AdapterTensors | null)[]): boolean {
  return adapters.some((a) => a !== null && PER_ROW_PARAMETERS.has(a.kind));
}

export const NEG = -1e9; // additive mask value: exp(NEG - max) is exactly 0 in float32, and never NaN

export class FeedContext {
  readonly biasList: BiasVector[];
  /** Broadcast [1, 1, n] tensors of the base biases (zeros for a norm's: see BiasVector), reused by every step without a BitFit row. */
  private readonly sharedBias: Record<string, ort.Tensor>;
  readonly layout: AdapterLayout;
  /** LoRA/IA3 feeds of a batch with no such row: the plain branch, empty stacks, broadcast ones. */
  private readonly plainFeeds: Record<string, ort.Tensor>;
  /** LoRA stacks by their set of adapters, the latest used last: decode and prefill steps reuse them. */
  private readonly stacks = new Map<string, { feeds: Record<string, ort.Tensor>; bytes: number }>();
  private stackBytes = 0;

  /**
   * `maxStackBytes`: the LoRA stacks kept hold at most this many bytes in all, the latest set's
   * included (that set alone may pass it), and 4 sets (the worker passes ADAPTER_CACHE_BYTES); each
   * set is a copy of its adapters' factors.
   */
  constructor(
    readonly base: BaseTensors,
    private readonly maxStackBytes = Infinity,
  ) {
    this.biasList = biasNames(base.config);
    // onnxruntime-node refuses tensors over a SharedArrayBuffer ("Invalid argument"): copy once here.
    this.sharedBias = Object.fromEntries(this.biasList.map(({ name, size, inNorm }) => [name, new ort.Tensor('float32', inNorm ? new Float32Array(size) : new Float32Array(base.biases[name]), [1, 1, size])]));
    this.layout = adapterLayout(linearModules(base.config));
    this.plainFeeds = { [ADAPTED_FLAG]: new ort.Tensor('bool', new Uint8Array([0]), []), ...this.loraStacks([]), ...this.ia3Feeds([]) };
  }

  /**
   * The full graph's per-row feeds for a run whose rows use `adapters`: bias vectors and LoRA/IA3.
   * The base graph takes none (see needsFullGraph).
   */
  rowFeeds(adapters: (AdapterTensors | null)[]): Record<string, ort.Tensor> {
    return { ...this.biasFeeds(adapters), ...this.adapterFeeds(adapters) };
  }

  /** Per-row LoRA and IA3 feeds (src/model/adapter-ops.ts) for a run whose rows use `adapters`. */
  adapterFeeds(adapters: (AdapterTensors | null)[]): Record<string, ort.Tensor> {
    // In key order, so the same adapters in other slots find their stack in the cache.
    const lora = ([...new Set(adapters.filter((a) => a?.kind === 'lora'))] as AdapterTensors[]).sort((a, b) => (a.key < b.key ? -1 : 1));
    const hasIa3 = adapters.some((a) => a?.kind === 'ia3');
    if (lora.length === 0 && !hasIa3) return this.plainFeeds;
    const stacks = this.stacksOf(lora);
    const offsets = new Map<AdapterTensors, number>();
    let K = 0;
    for (const a of lora) {
      offsets.set(a, K);
      K += a.lora!.rank;
    }
    // No zero-size inputs (the WebGPU provider crashes on them): without LoRA rows, one zero rank column.
    const select = new Float32Array(K === 0 ? 1 : adapters.length * K);
    adapters.forEach((a, r) => a?.kind === 'lora' && select.fill(1, r * K + offsets.get(a)!, r * K + offsets.get(a)! + a.lora!.rank));
    return {
      [ADAPTED_FLAG]: new ort.Tensor('bool', new Uint8Array([1]), []),
      ...stacks,
      [ADAPTER_INPUTS.select]: new ort.Tensor('float32', select, [K === 0 ? 1 : adapters.length, 1, Math.max(1, K)]),
      ...this.ia3Feeds(hasIa3 ? adapters : []),
    };
  }

  /** The LoRA stacks of a set of adapters (in key order), built or reused; the least recently used sets past the bounds are dropped. */
  private stacksOf(lora: AdapterTensors[]): Record<string, ort.Tensor> {
    const key = lora.map((a) => a.key).join('\n');
    let entry = this.stacks.get(key);
    if (entry) this.stacks.delete(key); // set again below: to the most recently used end
    else {
      const feeds = this.loraStacks(lora);
      entry = { feeds, bytes: (feeds[ADAPTER_INPUTS.loraA].data as Float32Array).byteLength + (feeds[ADAPTER_INPUTS.loraB].data as Float32Array).byteLength };
      this.stackBytes += entry.bytes;
    }
    this.stacks.set(key, entry);
    for (const [k, old] of this.stacks) {
      if (k === key || (this.stacks.size <= 4 && this.stackBytes <= this.maxStackBytes)) break;
      this.stacks.delete(k);
      this.stackBytes -= old.bytes;
    }
    return entry.feeds;
  }

  /** Bytes of the LoRA stacks kept (tests). */
  get loraStackBytes(): number {
    return this.stackBytes;
  }

  /**
   * The packed A [Σin, K] and B [K, Σout]: the adapters' factors side by side along the rank axis,
   * each adapter `lora.rank` columns wide; a module of a smaller rank (PEFT's rank_pattern) fills its
   * first columns and leaves zeros, which add exactly nothing.
   */
  private loraStacks(lora: AdapterTensors[]): Record<string, ort.Tensor> {
    const { slots, totalIn, totalOut } = this.layout;
    const K = Math.max(1, lora.reduce((n, a) => n + a.lora!.rank, 0)); // an all-zero column when there is no LoRA
    const A = new Float32Array(totalIn * K);
    const B = new Float32Array(K * totalOut);
    let at = 0;
    for (const a of lora) {
      for (const m of slots) {
        const f = a.lora!.modules[m.name];
        if (!f) continue;
        const r = f.a.length / m.in; // this module's rank
        for (let i = 0; i < m.in; i++) A.set(f.a.subarray(i * r, (i + 1) * r), (m.inAt + i) * K + at);
        for (let k = 0; k < r; k++) B.set(f.b.subarray(k * m.out, (k + 1) * m.out), (at + k) * totalOut + m.outAt);
      }
      at += a.lora!.rank;
    }
    return {
      [ADAPTER_INPUTS.select]: new ort.Tensor('float32', new Float32Array(1), [1, 1, 1]),
      [ADAPTER_INPUTS.loraA]: new ort.Tensor('float32', A, [totalIn, K]),
      [ADAPTER_INPUTS.loraB]: new ort.Tensor('float32', B, [K, totalOut]),
    };
  }

  /** The packed IA3 scales: [B, 1, Σn] with ones where a row has none, or a [1, 1, Σn] broadcast of ones. */
  private ia3Feeds(adapters: (AdapterTensors | null)[]): Record<string, ort.Tensor> {
    const { byName, totalIn, totalOut } = this.layout;
    const R = Math.max(1, adapters.length);
    const scales = { in: new Float32Array(R * totalIn).fill(1), out: new Float32Array(R * totalOut).fill(1) };
    adapters.forEach((a, r) => {
      if (a?.kind !== 'ia3') return;
      for (const [name, v] of Object.entries(a.ia3!)) {
        const m = byName.get(name)!;
        scales[v.side].set(v.scale, v.side === 'in' ? r * totalIn + m.inAt : r * totalOut + m.outAt);
      }
    });
    return {
      [ADAPTER_INPUTS.ia3In]: new ort.Tensor('float32', scales.in, [R, 1, totalIn]),
      [ADAPTER_INPUTS.ia3Out]: new ort.Tensor('float32', scales.out, [R, 1, totalOut]),
    };
  }

  /** Bias feeds for a run whose rows use `adapters` (row order). */
  biasFeeds(adapters: (AdapterTensors | null)[]): Record<string, ort.Tensor> {
    if (!adapters.some((a) => a?.kind === 'bitfit')) return this.sharedBias;
    const B = adapters.length;
    const feeds: Record<string, ort.Tensor> = {};
    for (const { name, size, inNorm } of this.biasList) {
      const data = new Float32Array(B * size);
      const base = this.base.biases[name];
      adapters.forEach((a, r) => {
        if (inNorm) {
          // The graph holds the checkpoint's value inside the norm: a row adds its difference from it.
          if (a?.kind === 'bitfit') for (let i = 0; i < size; i++) data[r * size + i] = a.biases![name][i] - base[i];
        } else data.set(a?.kind === 'bitfit' ? a.biases![name] : base, r * size);
      });
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
