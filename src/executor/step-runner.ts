import ort from 'onnxruntime-node';
import type { AdapterTensors, EnsembleGroup, NewSequence, Sampling, StepPlan, StepResult, TokenChoice } from '../protocol.js';
import { chooseTokens, type RowLogits } from './ensemble-sampling.js';
import { KvBatch, type Entry, type LayerKv } from './kv-batch.js';
import type { FeedContext } from './model-constants.js';
import { prefillFeeds, virtualTokens, type PrefillItem, type PrefillLayout } from './prefill.js';
import { logSumExp } from './sampler.js';

/**
 * Executes StepPlans against one ONNX Runtime session. It owns every tensor: adapter tensors by
 * key, and the running batch's KV cache. The scheduler only ever names sequences and adapters.
 */
export class StepRunner {
  private readonly adapters = new Map<string, AdapterTensors>();
  private readonly sampling = new Map<number, Sampling>();
  /** Ensemble members by seq: their rows share one token per step. */
  private readonly groups = new Map<number, EnsembleGroup>();
  private readonly batch: KvBatch;
  /** Per-slot bias, LoRA and IA3 feeds, rebuilt only when a slot changes owner. */
  private rowFeeds: Record<string, ort.Tensor> = {};
  private rowFeedsVersion = -1;

  constructor(
    private readonly session: ort.InferenceSession,
    private readonly ctx: FeedContext,
  ) {
    this.batch = new KvBatch(ctx.base.config);
  }

  async step(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    if (plan.reset) {
      this.batch.clear();
      this.sampling.clear();
      this.groups.clear();
    }
    for (const a of plan.adapters) this.adapters.set(a.key, a);
    for (const key of plan.forget) this.adapters.delete(key);
    let runMs = 0;
    let kvBytes = 0;
    let padded = 0;
    const timed = async (feeds: Record<string, ort.Tensor>) => {
      const t = performance.now();
      const out = await this.session.run(feeds);
      runMs += performance.now() - t;
      return out;
    };

    const dropped = new Set(plan.drop);
    for (const seq of dropped) {
      this.sampling.delete(seq);
      this.groups.delete(seq);
    }
    const tokens: TokenChoice[] = [];
    kvBytes += this.batch.remove(dropped);
    if (plan.decode.length > 0) {
      const { chosen, kvCopied } = await this.decode(plan, timed);
      tokens.push(...chosen);
      kvBytes += kvCopied;
    }

    const scores: StepResult['scores'] = [];
    if (plan.prefill.length > 0 || plan.score.length > 0) {
      const items: PrefillItem[] = [
        ...plan.prefill.map((s) => ({ adapter: this.adapter(s.adapter), tokens: s.tokens, logitAt: [] as number[] })),
        ...plan.score.map((s) => this.scoreItem(s.adapter, s.context, s.targets)),
      ];
      for (const it of items.slice(0, plan.prefill.length)) it.logitAt = [virtualTokens(it.adapter, 'prompt') + it.tokens.length - 1];
      const layout = prefillFeeds(this.ctx, items);
      padded = layout.S * items.length - layout.length.reduce((n, l) => n + l, 0);
      const out = await timed(layout.feeds);
      const logits = out.logits.data as Float32Array;
      const V = this.ctx.base.config.vocabSize;
      let at = 0;
      const sampled: RowLogits[] = plan.prefill.map((s) => {
        this.sampling.set(s.seq, s.sampling);
        if (s.group) this.groups.set(s.seq, s.group);
        const row = { seq: s.seq, logits: logits.subarray(at * V, (at + 1) * V), sampling: s.sampling, step: 0, group: s.group };
        at++;
        return row;
      });
      tokens.push(...chooseTokens(sampled));
      plan.score.forEach((s, k) => {
        const item = items[plan.prefill.length + k];
        const targets = s.targets.slice(s.targets.length - item.logitAt.length);
        const logprobs = targets.map((tok) => {
          const row = logits.subarray(at * V, (at + 1) * V);
          at++;
          return row[tok] - logSumExp(row);
        });
        scores.push({ id: s.id, logprobs });
      });
      if (plan.prefill.length > 0) kvBytes += this.batch.place(this.joining(plan.prefill, out, layout));
    }
    return { tokens, scores, ms: { run: runMs, total: performance.now() - t0 }, kvCopiedBytes: kvBytes, paddedTokens: padded, kv: this.batch.stats };
  }

  private adapter(key: string | null): AdapterTensors | null {
    if (key === null) return null;
    const a = this.adapters.get(key);
    if (!a) throw new Error(`adapter ${key} was never sent to the worker`);
    return a;
  }

  /** Logits are wanted where they predict a target: the last input is never needed, so it is not fed. */
  private scoreItem(key: string | null, context: number[], targets: number[]): PrefillItem {
    const adapter = this.adapter(key);
    const tokens = [...context, ...targets].slice(0, -1);
    const vt = virtualTokens(adapter, 'prompt');
    const logitAt: number[] = [];
    for (let i = 0; i < targets.length; i++) {
      const predictor = vt + context.length + i - 1;
      if (predictor >= 0) logitAt.push(predictor);
    }
    return { adapter, tokens, logitAt };
  }

  /** One decode step over the live rows only (packed in the batch's first slots); spare slots are never computed. */
  private async decode(plan: StepPlan, run: (f: Record<string, ort.Tensor>) => Promise<ort.InferenceSession.OnnxValueMapType>) {
    const wanted = new Map(plan.decode.map((d) => [d.seq, d]));
    const live = this.batch.live;
    if (live.length !== wanted.size || live.some((r) => !wanted.has(r.seq))) {
      throw new Error(`decode plan names ${wanted.size} sequences but ${live.length} are running, or names others`);
    }
    const { hidden: D, vocabSize: V, layers: L } = this.ctx.base.config;
    const B = live.length;
    const embeds = new Float32Array(B * D);
    live.forEach((row, r) => this.ctx.embed(embeds, r * D, wanted.get(row.seq)!.token));
    const { attnBias, positions, past } = this.batch.stepFeeds();
    if (this.rowFeedsVersion !== this.batch.version) {
      const owners = live.map((r) => r.adapter);
      this.rowFeeds = { ...this.ctx.biasFeeds(owners), ...this.ctx.adapterFeeds(owners) };
      this.rowFeedsVersion = this.batch.version;
    }
    const out = await run({
      inputs_embeds: new ort.Tensor('float32', embeds, [B, 1, D]),
      position_ids: positions,
      attn_bias: attnBias,
      logit_index: new ort.Tensor('int64', BigInt64Array.from(live, (_, r) => BigInt(r)), [B]),
      ...past,
      ...this.rowFeeds,
    });
    const logits = out.logits.data as Float32Array;
    const rows: RowLogits[] = live.map((row, r) => ({
      seq: row.seq,
      logits: logits.subarray(r * V, (r + 1) * V),
      sampling: this.sampling.get(row.seq)!,
      step: wanted.get(row.seq)!.step,
      group: this.groups.get(row.seq),
    }));
    const chosen = chooseTokens(rows);
    const kvCopied = this.batch.append(newKv(out, L));
    return { chosen, kvCopied };
  }

  /** The new sequences of a prefill as batch entries: prefix columns from the fed past, then the prompt's. */
  private joining(seqs: NewSequence[], out: ort.InferenceSession.OnnxValueMapType, layout: PrefillLayout): Entry[] {
    const { P, S, prefix, length, feeds } = layout;
    const L = this.ctx.base.config.layers;
    const past: LayerKv[] = [];
    for (let l = 0; l < L; l++) past.push({ keys: feeds[`past_key_${l}`].data as Float32Array, values: feeds[`past_value_${l}`].data as Float32Array });
    const fresh = newKv(out, L);
    return seqs.map((s, r) => ({
      keep: { seq: s.seq, adapter: this.adapter(s.adapter), position: prefix[r] + length[r] },
      segments: [
        { kv: past, cols: P, row: r, from: 0, to: prefix[r] },
        { kv: fresh, cols: S, row: r, from: 0, to: length[r] },
      ],
    }));
  }
}

function newKv(out: ort.InferenceSession.OnnxValueMapType, layers: number): LayerKv[] {
  const kv: LayerKv[] = [];
  for (let l = 0; l < layers; l++) kv.push({ keys: out[`new_key_${l}`].data as Float32Array, values: out[`new_value_${l}`].data as Float32Array });
  return kv;
}
