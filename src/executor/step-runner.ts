import ort from 'onnxruntime-node';
import { fetchedKv, KV_OUTPUT } from '../model/kv-output.js';
import { startsAfterPast, tensorBytes, type AdapterTensors, type DecodeRow, type EnsembleGroup, type NewSequence, type Sampling, type ScoreRow, type StepPlan, type StepResult, type TokenChoice } from '../protocol.js';
import { padLogitIndex, StepHead, type HeadRow } from './head.js';
import { KvBatch, type Entry, type LayerKv } from './kv-batch.js';
import { needsFullGraph, type FeedContext } from './model-constants.js';
import { fedLength, fedPrompt, lengthRuns, PACK_POSITIONS, packOrSplit, pastColumns, prefillFeeds, RUN_COST, type PrefillItem, type PrefillLayout } from './prefill.js';
import { PastKvCache } from './prompt-kv.js';
import type { RunGate } from './run-gate.js';
import { pickGraph, type ModelSessions } from './sessions.js';

/**
 * Executes StepPlans against one ONNX Runtime session. It owns every tensor: adapter tensors by
 * key, and the running batch's KV cache. The scheduler only ever names sequences and adapters.
 */
export class StepRunner {
  private readonly adapters = new Map<string, AdapterTensors>();
  private readonly sampling = new Map<number, Sampling>();
  /** Ensemble members by seq: their rows share one token per step. */
  private readonly groups = new Map<number, EnsembleGroup>();
  /** Per running seq: the token its next decode feeds (the one chosen for it last) and that decode's step. */
  private readonly next = new Map<number, { token: number; step: number }>();
  /** Per running seq with penalties (for an ensemble, its leader, whose row samples the mixture): how many times it has generated each token. */
  private readonly generated = new Map<number, Map<number, number>>();
  private readonly batch: KvBatch;
  /** The decode batch's bias, LoRA and IA3 feeds (full graph), rebuilt only when a slot changes owner. */
  private rowFeeds: Record<string, ort.Tensor> = {};
  private rowFeedsVersion = -1;
  /** The full graph's session and the base graph's (null: the full graph runs everything). */
  private readonly sessions: ModelSessions;
  /** Forward passes by graph, since the start (tests, benchmarks). */
  readonly runs = { base: 0, full: 0 };
  /** Bytes of the adapters forgotten (plan.forget, plan.reset), since the start: the worker's Reclaimer frees them. */
  forgottenBytes = 0;
  /** Bytes of the adapters held (tensorBytes). */
  private heldBytes = 0;
  /** The graph ends with the sampling head (src/model/sampling-head.ts), not plain logits. */
  private readonly graphHead: boolean;
  /** Soft prompts' and prefixes' KV by adapter key. */
  readonly pastKv: PastKvCache;
  /** No zero-size feeds: empty index inputs get one dummy row (see padHeadFeeds). */
  private readonly padEmpty: boolean;
  /** What one more prefill run costs, in padded positions (prefill.ts lengthRuns); Infinity: one run per step. */
  private readonly prefillRunCost: number;
  /** Positions a packed prefill run holds at most (prefill.ts PACK_POSITIONS); 0: rows are never packed. */
  private readonly packPositions: number;
  /** Held around every session.run, so that the main thread never terminates the worker inside one (run-gate.ts). */
  private readonly gate: RunGate | null;

  /**
   * `promptKv` false (PROMPT_KV_CACHE=off): soft prompts are prefilled with every request, for benchmarks; on by default.
   * `padEmpty`: for the WebGPU provider, which crashes on any zero-size input; the CPU keeps empty feeds (cheaper).
   * `base`: the base graph's session (src/model/graph-cache.ts), beside the full graph's `session`.
   * `prefillRunCost`: see prefill.ts RUN_COST (its default); Infinity pads every new row of a step into one run.
   * `packPositions`: see prefill.ts PACK_POSITIONS (its default); 0 never packs rows (as with Infinity above,
   * every row then joins the one padded run). Packing needs the base graph.
   */
  constructor(
    session: ort.InferenceSession,
    private readonly ctx: FeedContext,
    opts: { promptKv?: boolean; padEmpty?: boolean; base?: ort.InferenceSession | null; prefillRunCost?: number; packPositions?: number; gate?: RunGate } = {},
  ) {
    this.gate = opts.gate ?? null;
    this.sessions = { session, base: opts.base ?? null };
    this.batch = new KvBatch(ctx.base.config);
    this.graphHead = session.inputNames.includes('draw_rows');
    this.pastKv = new PastKvCache(ctx, opts.promptKv ?? true);
    this.padEmpty = opts.padEmpty ?? false;
    this.prefillRunCost = opts.prefillRunCost ?? RUN_COST;
    this.packPositions = this.sessions.base && this.prefillRunCost !== Infinity ? (opts.packPositions ?? PACK_POSITIONS) : 0;
  }

  async step(plan: StepPlan): Promise<StepResult> {
    const t0 = performance.now();
    if (plan.reset) {
      this.batch.clear();
      this.sampling.clear();
      this.groups.clear();
      this.next.clear();
      this.generated.clear();
      // The scheduler starts its account of what this worker holds again from nothing.
      for (const key of [...this.adapters.keys()]) this.forget(key);
    }
    for (const a of plan.adapters) this.hold(a);
    for (const key of plan.forget) this.forget(key);
    let runMs = 0;
    let kvBytes = 0;
    let padded = 0;
    /** One forward pass over rows with `adapters`: on the base graph unless a row needs the full one, with its row feeds. */
    const timed: Timed = async (feeds, adapters, fetch, rowFeeds = () => this.ctx.rowFeeds(adapters)) => {
      const run = pickGraph(this.sessions, this.ctx, feeds, adapters, rowFeeds);
      this.runs[run.graph]++;
      const t = performance.now();
      // A run that wants no logits (a soft prompt's KV alone) picks one dummy row, for the padded head's index 0.
      this.gate?.enter();
      try {
        const out = await run.session.run(this.padEmpty ? padLogitIndex(run.feeds) : run.feeds, fetch);
        runMs += performance.now() - t;
        return out;
      } finally {
        this.gate?.leave();
      }
    };

    const dropped = new Set(plan.drop);
    for (const seq of dropped) {
      this.sampling.delete(seq);
      this.groups.delete(seq);
      this.next.delete(seq);
      this.generated.delete(seq);
    }
    const tokens: TokenChoice[] = [];
    kvBytes += this.batch.remove(dropped);
    if (plan.decode.length > 0) {
      const { chosen, kvCopied } = await this.decode(plan, timed);
      tokens.push(...chosen);
      kvBytes += kvCopied;
    }

    const scores: StepResult['scores'] = [];
    const before = { hits: this.pastKv.hits, misses: this.pastKv.misses };
    if (plan.prefill.length > 0 || plan.score.length > 0) {
      // A soft prompt's KV not held yet is computed first, in a run of its own: the rows start after it.
      const starting = [...plan.prefill.filter((s) => startsAfterPast(this.adapter(s.adapter), s.tokens.length)).map((s) => s.adapter), ...plan.score.filter((s) => startsAfterPast(this.adapter(s.adapter), s.context.length)).map((s) => s.adapter)];
      const V = this.ctx.base.config.vocabSize;
      // That run needs no logits: the head is fed with no rows.
      await this.pastKv.prepare(starting.map((key) => this.adapter(key)), (f) => timed({ ...f, ...new StepHead([], V, this.graphHead, this.padEmpty).feeds() }, [], [KV_OUTPUT]));
      const items: PrefillItem[] = [
        ...plan.prefill.map((s) => this.prefillItem(s.adapter, s.tokens)),
        ...plan.score.map((s) => this.scoreItem(s.adapter, s.context, s.targets)),
      ];
      // The runs' new sequences join the batch together: one resize at most.
      const joining: Entry[] = [];
      for (const run of prefillRuns(plan, items, this.prefillRunCost, this.packPositions)) {
        const done = await this.prefill(run, timed);
        tokens.push(...done.chosen);
        scores.push(...done.scores);
        joining.push(...done.joining);
        padded += done.padded;
      }
      kvBytes += this.batch.place(joining);
    }
    const promptKv = { hits: this.pastKv.hits - before.hits, misses: this.pastKv.misses - before.misses };
    return { tokens, scores, ms: { run: runMs, total: performance.now() - t0 }, kvCopiedBytes: kvBytes, promptKv, paddedTokens: padded, kv: this.batch.stats, adapters: { held: this.adapters.size, bytes: this.heldBytes } };
  }

  private hold(a: AdapterTensors): void {
    if (!this.adapters.has(a.key)) this.heldBytes += tensorBytes(a);
    this.adapters.set(a.key, a);
  }

  private forget(key: string): void {
    const a = this.adapters.get(key);
    if (a) {
      const bytes = tensorBytes(a);
      this.heldBytes -= bytes;
      this.forgottenBytes += bytes;
    }
    this.adapters.delete(key);
    this.pastKv.forget(key);
  }

  private adapter(key: string | null): AdapterTensors | null {
    if (key === null) return null;
    const a = this.adapters.get(key);
    if (!a) throw new Error(`adapter ${key} was never sent to the worker`);
    return a;
  }

  /** One prefill run: new sequences (their first token chosen, their KV as batch entries) and score rows. */
  private async prefill(run: PrefillRun, timed: Timed): Promise<{ chosen: TokenChoice[]; scores: StepResult['scores']; joining: Entry[]; padded: number }> {
    const { seqs, score, items } = run;
    const layout = prefillFeeds(this.ctx, items, run.packed);
    // Logit rows in logit_index order: one per new sequence, then each score row's targets.
    const headRows: HeadRow[] = seqs.map((s) => {
      this.sampling.set(s.seq, s.sampling);
      if (s.group) this.groups.set(s.seq, s.group);
      return { seq: s.seq, sampling: s.sampling, step: 0, group: s.group };
    });
    const scoreTargets = score.map((s, k) => s.targets.slice(s.targets.length - items[seqs.length + k].logitAt.length));
    for (const targets of scoreTargets) headRows.push(...targets.map((target) => ({ target })));
    const head = new StepHead(headRows, this.ctx.base.config.vocabSize, this.graphHead, this.padEmpty);
    // A run of score rows alone keeps no KV: it fetches the head's outputs only, and is skipped
    // when there are none (a row's one target with no predictor: no context, no soft prompt).
    const fetch = seqs.length > 0 ? [...head.outputs(), KV_OUTPUT] : head.outputs();
    const out = fetch.length > 0 ? await timed({ ...layout.feeds, ...head.feeds() }, items.map((it) => it.adapter), fetch) : null;
    const read = out ? head.read(out) : { chosen: [], scores: [] };
    this.remember(seqs.map((s) => ({ seq: s.seq, step: 0 })), read.chosen);
    let at = 0;
    const scores = score.map((s, k) => ({ id: s.id, logprobs: read.scores.slice(at, (at += scoreTargets[k].length)) }));
    const padded = out ? layout.padded : 0;
    return { chosen: read.chosen, scores, joining: seqs.length > 0 ? this.joining(seqs, out!, layout) : [], padded };
  }

  /**
   * A new sequence: it starts after its adapter's past where it has one (see startsAfterPast: an
   * empty prompt feeds its soft prompt again); its last position's logits are wanted.
   */
  private prefillItem(key: string | null, tokens: number[]): PrefillItem {
    const adapter = this.adapter(key);
    const past = startsAfterPast(adapter, tokens.length) ? this.pastKv.get(adapter) : undefined;
    const it: PrefillItem = { adapter, tokens, logitAt: [], past };
    it.logitAt = [fedPrompt(it) + tokens.length - 1];
    return it;
  }

  /**
   * Logits are wanted where they predict a target: the last input is never needed, so it is not fed.
   * With no context, the first target is predicted by the soft prompt's last position: such a row
   * (rare) feeds its soft prompt again rather than the cache keeping a logits row per adapter.
   */
  private scoreItem(key: string | null, context: number[], targets: number[]): PrefillItem {
    const adapter = this.adapter(key);
    const tokens = [...context, ...targets].slice(0, -1);
    const past = startsAfterPast(adapter, context.length) ? this.pastKv.get(adapter) : undefined;
    const vt = fedPrompt({ adapter, tokens, logitAt: [], past });
    const logitAt: number[] = [];
    for (let i = 0; i < targets.length; i++) {
      const predictor = vt + context.length + i - 1;
      if (predictor >= 0) logitAt.push(predictor);
    }
    return { adapter, tokens, logitAt, past };
  }

  /** One decode step over the live rows only (packed in the batch's first slots); spare slots are never computed. */
  private async decode(plan: StepPlan, run: Timed) {
    const wanted = new Map(plan.decode.map((d) => [d.seq, this.inputOf(d)]));
    const live = this.batch.live;
    if (live.length !== wanted.size || live.some((r) => !wanted.has(r.seq))) {
      throw new Error(`decode plan names ${wanted.size} sequences but ${live.length} are running, or names others`);
    }
    const { hidden: D, vocabSize: V, layers: L } = this.ctx.base.config;
    const B = live.length;
    const embeds = new Float32Array(B * D);
    live.forEach((row, r) => this.ctx.embed(embeds, r * D, wanted.get(row.seq)!.token));
    const { attnBias, positions, past } = this.batch.stepFeeds();
    const owners = live.map((r) => r.adapter);
    const rowFeeds = () => {
      if (this.rowFeedsVersion !== this.batch.version) {
        this.rowFeeds = this.ctx.rowFeeds(owners);
        this.rowFeedsVersion = this.batch.version;
      }
      return this.rowFeeds;
    };
    // Live rows are packed in the first B slots: every computed row needs its logits.
    const headRows: HeadRow[] = live.map((row) => ({ seq: row.seq, sampling: this.sampling.get(row.seq)!, step: wanted.get(row.seq)!.step, group: this.groups.get(row.seq), generated: this.generated.get(row.seq) }));
    const head = new StepHead(headRows, V, this.graphHead, this.padEmpty);
    const out = await run({
      inputs_embeds: new ort.Tensor('float32', embeds, [B, 1, D]),
      position_ids: positions,
      attn_bias: attnBias,
      logit_index: new ort.Tensor('int64', BigInt64Array.from(live, (_, r) => BigInt(r)), [B]),
      ...past,
      ...head.feeds(),
    }, owners, [...head.outputs(), KV_OUTPUT], rowFeeds);
    const { chosen } = head.read(out);
    this.remember(headRows as { seq: number; step: number }[], chosen);
    const kvCopied = this.batch.append(fetchedKv(out, L));
    return { chosen, kvCopied };
  }

  /** What a decode row feeds: the plan's token and step where it gives them, else this worker's own. */
  private inputOf(d: DecodeRow): { token: number; step: number } {
    const own = this.next.get(d.seq);
    const token = d.token ?? own?.token;
    const step = d.step ?? own?.step;
    if (token === undefined || step === undefined) throw new Error(`sequence ${d.seq} has no token to decode`);
    return { token, step };
  }

  /** Rows just computed feed their chosen token next; an ensemble member its leader's (one choice per group). */
  private remember(rows: { seq: number; step: number }[], chosen: TokenChoice[]): void {
    for (const c of chosen) {
      if (!this.sampling.get(c.seq)?.penalties) continue;
      const counts = this.generated.get(c.seq) ?? new Map<number, number>();
      counts.set(c.token, (counts.get(c.token) ?? 0) + 1);
      this.generated.set(c.seq, counts);
    }
    const byLeader = new Map(chosen.map((c) => [c.seq, c.token]));
    for (const { seq, step } of rows) {
      const token = byLeader.get(this.groups.get(seq)?.leader ?? seq);
      if (token !== undefined) this.next.set(seq, { token, step: step + 1 });
    }
  }

  /** The new sequences of a prefill as batch entries: prefix columns from the fed past, then the prompt's. */
  private joining(seqs: NewSequence[], out: ort.InferenceSession.OnnxValueMapType, layout: PrefillLayout): Entry[] {
    const { P, S, prefix, length, row, pastAt, seqAt, feeds } = layout;
    const L = this.ctx.base.config.layers;
    const past: LayerKv[] = [];
    for (let l = 0; l < L; l++) past.push({ keys: feeds[`past_key_${l}`].data as Float32Array, values: feeds[`past_value_${l}`].data as Float32Array });
    const fresh = fetchedKv(out, L);
    return seqs.map((s, r) => ({
      keep: { seq: s.seq, adapter: this.adapter(s.adapter), position: prefix[r] + length[r] },
      segments: [
        { kv: past, cols: P, row: row[r], from: pastAt[r], to: pastAt[r] + prefix[r] },
        { kv: fresh, cols: S, row: row[r], from: seqAt[r], to: seqAt[r] + length[r] },
      ],
    }));
  }
}

/** One forward pass over rows with `adapters` (StepRunner.step's `timed`): the outputs named in `fetch`. */
type Timed = (feeds: Record<string, ort.Tensor>, adapters: (AdapterTensors | null)[], fetch: string[], rowFeeds?: () => Record<string, ort.Tensor>) => Promise<ort.InferenceSession.OnnxValueMapType>;

/** A prefill run's rows: new sequences, then score rows, and their items in that order; packed or padded (prefillFeeds). */
interface PrefillRun {
  seqs: NewSequence[];
  score: ScoreRow[];
  items: PrefillItem[];
  packed: boolean;
}

/**
 * A step's new rows (`items`: the plan's prefill rows, then its score rows) in runs: rows of the
 * base graph packed, at most `pack` positions a run, where that costs less than runs of similar
 * length (prefill.ts packOrSplit); the others (per-row parameters: BitFit, LoRA, IA3) in padded
 * runs of similar length (prefill.ts lengthRuns). An ensemble's members stay in one run: its head
 * mixes them.
 */
function prefillRuns(plan: StepPlan, items: PrefillItem[], runCost: number, pack: number): PrefillRun[] {
  const units: number[][] = [];
  const ensembles = new Map<number, number[]>();
  plan.prefill.forEach((s, i) => {
    const members = s.group && ensembles.get(s.group.leader);
    if (members) members.push(i);
    else {
      const unit = [i];
      units.push(unit);
      if (s.group) ensembles.set(s.group.leader, unit);
    }
  });
  plan.score.forEach((_, k) => units.push([plan.prefill.length + k]));
  const n = plan.prefill.length;
  const run = (unitRows: number[][], packed: boolean): PrefillRun => {
    const rows = unitRows.flat().sort((a, b) => a - b);
    return { seqs: rows.filter((i) => i < n).map((i) => plan.prefill[i]), score: rows.filter((i) => i >= n).map((i) => plan.score[i - n]), items: rows.map((i) => items[i]), packed };
  };
  const canPack = (u: number[]) => pack > 0 && !needsFullGraph(u.map((i) => items[i].adapter));
  const packable = units.filter(canPack);
  const padded = units.filter((u) => !canPack(u));
  const packing = packOrSplit(packable.map((u) => u.map((i) => ({ fed: fedLength(items[i]), past: pastColumns(items[i]) }))), pack, runCost);
  return [
    ...packing.runs.map((r) => run(r.map((k) => packable[k]), packing.packed)),
    ...lengthRuns(padded.map((u) => ({ rows: u.length, width: Math.max(...u.map((i) => fedLength(items[i]))) })), runCost).map((r) => run(r.map((k) => padded[k]), false)),
  ];
}
