import ort from 'onnxruntime-node';
import { TOP_P_CANDIDATES } from '../model/sampling-head.js';
import type { EnsembleGroup, Sampling, TokenChoice } from '../protocol.js';
import { chooseTokens, type RowLogits } from './ensemble-sampling.js';
import { logSumExp, pickCandidate, uniform } from './sampler.js';

/** One picked row of a step's logits, in `logit_index` order: a token to choose, or a score target's log-probability. */
export type HeadRow = { seq: number; sampling: Sampling; step: number; group?: EnsembleGroup } | { target: number };

/**
 * How a row's token is chosen with the graph head (src/model/sampling-head.ts). Each route reads only
 * its outputs; every one draws exactly what sampler.ts's sample() draws from the full row.
 * - greedy: `next_greedy`. sample: `sampled` (temperature over the whole vocabulary).
 * - topk: top_k candidates from TopK, drawn on the host (top-p, if any, cut within them).
 * - topp: TopK candidates and the graph's total; when they hold less than p of it, the full row.
 * - host: the full row through the host sampler: logit_bias and ensemble members (whose mixture is
 *   computed on the host), and top_k ≥ V.
 */
type Route = 'greedy' | 'sample' | 'topk' | 'topp' | 'host';

function routeOf(s: Sampling, group: EnsembleGroup | undefined, V: number): Route {
  if (group || s.logitBias?.length) return 'host';
  if (s.temperature === 0) return 'greedy';
  if (s.topK > 0) return s.topK < V ? 'topk' : 'host';
  return s.topP < 1 ? 'topp' : 'sample';
}

/** How often top-p rows were drawn from the graph's candidates or needed their full row (tests, tuning TOP_P_CANDIDATES). */
export const topPCounts = { candidates: 0, fullRow: 0 };

/** Most candidates a top-p row asks of TopK: a nucleus wider than this is drawn from the full row. */
const MAX_TOP_P_CANDIDATES = 16384;

/**
 * TopK candidates for a top-p row: its nucleus at the previous step with a margin (consecutive
 * steps' distributions are alike), at least TOP_P_CANDIDATES. A miss costs only speed: the full row decides.
 */
function topPCandidates(hint: number | undefined): number {
  if (hint === undefined) return TOP_P_CANDIDATES;
  return Math.min(MAX_TOP_P_CANDIDATES, Math.max(TOP_P_CANDIDATES, 2 ** Math.ceil(Math.log2(hint * 1.25))));
}

/** 0, 1, … n−1: candidates' positions, which pickCandidate returns. */
function identity(n: number): Int32Array {
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  return order;
}

const int64 = (xs: number[]) => new ort.Tensor('int64', BigInt64Array.from(xs, BigInt), [xs.length]);

/**
 * The sampling head's host side for one step: the row-index feeds from each row's Sampling, and the
 * outputs turned into TokenChoices and score log-probabilities. With a 'host'-mode graph (plain
 * `logits` for every row) it is today's host sampling, the oracle the graph head is tested against.
 */
export class StepHead {
  private readonly routes: (Route | 'score')[];
  /** Per row: its index into lp_rows, sample_rows and full_rows, or -1. */
  private readonly lp: number[] = [];
  private readonly sample: number[] = [];
  private readonly full: number[] = [];
  private readonly lpRows: number[] = [];
  private readonly sampleRows: number[] = [];
  private readonly fullRows: number[] = [];
  private topCount = 1;

  constructor(
    private readonly rows: HeadRow[],
    private readonly V: number,
    /** The session's graph ends with the sampling head (its inputs include `sample_rows`). */
    private readonly graph: boolean,
    /** Top-p rows' nucleus sizes by seq, kept by the caller from step to step (sizes their TopK). */
    private readonly nucleus = new Map<number, number>(),
    /** No zero-size feeds (the WebGPU provider crashes on them): an empty index input gets one dummy row, never read. */
    private readonly padEmpty = false,
  ) {
    this.routes = rows.map((row, n) => {
      const add = (list: number[], at: number[]) => at.push(list.push(n) - 1);
      const route = 'target' in row ? 'score' : graph ? routeOf(row.sampling, row.group, V) : 'host';
      const s = 'target' in row ? null : row.sampling;
      const needLp = route === 'score' || route === 'topk' || route === 'topp' || (route !== 'host' && (s!.logprobs > 0 || !!s!.chosenLogprob));
      if (needLp) {
        add(this.lpRows, this.lp);
        const k = route === 'topk' ? s!.topK : route === 'topp' ? topPCandidates(this.nucleus.get((row as { seq: number }).seq)) : 1;
        this.topCount = Math.max(this.topCount, k, s?.logprobs ?? 0);
      } else this.lp.push(-1);
      if (route === 'sample' || route === 'topp') add(this.sampleRows, this.sample);
      else this.sample.push(-1);
      if (route === 'host' || route === 'topp') add(this.fullRows, this.full);
      else this.full.push(-1);
      return route;
    });
    // k = 0 when no row asks: onnxruntime 1.30's TopK dies of SIGFPE on an empty input with k > 0
    // (a padded lp_rows is never empty, so it takes k = 1).
    this.topCount = this.lpRows.length > 0 ? Math.min(this.topCount, V) : padEmpty ? 1 : 0;
  }

  /** The head's inputs ({} for a 'host'-mode graph). */
  feeds(): Record<string, ort.Tensor> {
    if (!this.graph) return {};
    const sampling = this.sampleRows.map((n) => this.rows[n] as Extract<HeadRow, { seq: number }>);
    const feeds = {
      lp_rows: int64(this.lpRows),
      lp_targets: int64(this.lpRows.map((n) => ('target' in this.rows[n] ? (this.rows[n] as { target: number }).target : 0))),
      top_count: int64([this.topCount]),
      sample_rows: int64(this.sampleRows),
      sample_temperature: new ort.Tensor('float64', Float64Array.from(sampling, (r) => r.sampling.temperature), [sampling.length]),
      sample_uniform: new ort.Tensor('float64', Float64Array.from(sampling, (r) => uniform(r.sampling.seed, r.step)), [sampling.length]),
      full_rows: int64(this.fullRows),
    };
    return this.padEmpty ? padHeadFeeds(feeds) : feeds;
  }

  /** Chosen tokens (plain rows in order, then one per ensemble group) and score rows' log-probabilities in order. */
  read(out: ort.InferenceSession.OnnxValueMapType): { chosen: TokenChoice[]; scores: number[] } {
    const V = this.V;
    const logits = out.logits.data as Float32Array;
    const fullRow = (n: number) => logits.subarray(this.full[n] * V, (this.full[n] + 1) * V);
    const chosen: TokenChoice[] = [];
    const scores: number[] = [];
    const hostRows: RowLogits[] = [];
    if (!this.graph) {
      // Plain logits for every row: the host path, row n at n.
      this.rows.forEach((row, n) => {
        const x = logits.subarray(n * V, (n + 1) * V);
        if ('target' in row) scores.push(x[row.target] - logSumExp(x));
        else hostRows.push({ ...row, logits: x });
      });
      return { chosen: chooseTokens(hostRows), scores };
    }
    const num = (name: string) => out[name].data as ArrayLike<number | bigint>;
    const greedy = num('next_greedy') as BigInt64Array;
    const lse = out.lp_lse.data as Float32Array;
    const values = out.top_values.data as Float32Array;
    const indices = out.top_indices.data as BigInt64Array;
    const targetLp = out.target_logprob.data as Float32Array;
    const sampled = out.sampled.data as BigInt64Array;
    const totals = out.sample_total.data as Float64Array;
    const sampledLogit = out.sampled_logit.data as Float32Array;
    const k = this.topCount;
    const candidates = (a: number, count: number) => ({ order: Array.from(indices.subarray(a * k, a * k + count), Number), values: values.subarray(a * k, a * k + count) });
    this.rows.forEach((row, n) => {
      const route = this.routes[n];
      if ('target' in row) {
        scores.push(targetLp[this.lp[n]]);
        return;
      }
      const s = row.sampling;
      if (route === 'host') {
        hostRows.push({ ...row, logits: fullRow(n) });
        return;
      }
      const a = this.lp[n];
      let token: number;
      let logit = NaN; // the chosen token's raw logit, where the route knows it
      if (route === 'greedy') {
        token = Number(greedy[n]);
        if (a >= 0) logit = values[a * k];
      } else if (route === 'sample') {
        token = Number(sampled[this.sample[n]]);
        logit = sampledLogit[this.sample[n]];
      } else {
        // Candidates' weights, most likely first, as sampler.ts computes them; a top-p row needs them
        // only up to its nucleus (the same running mass as nucleusSize), a top-k row all k.
        // Plain loops over a preallocated array: Array.push, reduce and Int32Array.from with a
        // callback cost 5× as much over a top_k of thousands (the same sums, in the same order).
        const first = a * k;
        const count = route === 'topk' ? s.topK : k;
        let total = route === 'topp' ? totals[this.sample[n]] : 0;
        let probs: number[] = new Array<number>(count);
        let mass = 0;
        let taken = count;
        for (let i = 0; i < count; i++) {
          const w = Math.exp((values[first + i] - values[first]) / s.temperature);
          probs[i] = w;
          if (route === 'topp' && (mass += w / total) >= s.topP) {
            taken = i + 1;
            break;
          }
        }
        if (taken < count) probs = probs.slice(0, taken);
        if (route === 'topp' && mass < s.topP) {
          // The nucleus is wider than the candidates: the full row decides, exactly as before.
          topPCounts.fullRow++;
          this.nucleus.set(row.seq, Math.min(V, 4 * count));
          hostRows.push({ ...row, logits: fullRow(n) });
          return;
        }
        if (route === 'topp') {
          topPCounts.candidates++;
          this.nucleus.set(row.seq, probs.length);
        } else for (let i = 0; i < count; i++) total += probs[i];
        const at = pickCandidate(identity(probs.length), probs, total, s.topP, uniform(s.seed, row.step));
        token = Number(indices[first + at]);
        logit = values[first + at];
      }
      const choice: TokenChoice = { seq: row.seq, token };
      if (s.logprobs > 0 || s.chosenLogprob) {
        choice.logprob = logit - lse[a];
        const top = candidates(a, s.logprobs);
        choice.top = top.order.map((t, i) => ({ token: t, logprob: top.values[i] - lse[a] }));
      }
      chosen.push(choice);
    });
    return { chosen: [...chosen, ...chooseTokens(hostRows)], scores };
  }
}

/**
 * Feeds that make a graph-head session return full `logits` for every picked row, as a 'host'-mode
 * graph does: for tests and tools that read logits straight from session.run.
 */
export function fullLogitsFeeds(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>, padEmpty = false): Record<string, ort.Tensor> {
  if (!session.inputNames.includes('full_rows')) return feeds;
  const n = Number(feeds.logit_index.dims[0]);
  const none = new ort.Tensor('float64', new Float64Array(0), [0]);
  const head = { lp_rows: int64([]), lp_targets: int64([]), top_count: int64([0]), sample_rows: int64([]), sample_temperature: none, sample_uniform: none, full_rows: int64(Array.from({ length: n }, (_, i) => i)) };
  return { ...feeds, ...(padEmpty ? padHeadFeeds(head) : head) };
}

/**
 * The head's row-index feeds with every empty one given one dummy row (index 0, target 0,
 * temperature 1, uniform 0; top_count 1 with a dummy lp row), whose outputs nobody reads: for the
 * WebGPU provider, which crashes on zero-size inputs. Index 0 needs a picked row: see padLogitIndex.
 * Not on the CPU: a dummy sample row costs a 50k-wide float64 softmax and cumulative sum per step.
 */
export function padHeadFeeds<F extends Record<string, ort.Tensor>>(feeds: F): F {
  const empty = (name: string) => Number(feeds[name].dims[0]) === 0;
  const out: Record<string, ort.Tensor> = { ...feeds };
  if (empty('lp_rows')) {
    out.lp_rows = int64([0]);
    out.lp_targets = int64([0]);
    out.top_count = int64([Math.max(1, Number((feeds.top_count.data as BigInt64Array)[0]))]);
  }
  if (empty('sample_rows')) {
    out.sample_rows = int64([0]);
    out.sample_temperature = new ort.Tensor('float64', Float64Array.of(1), [1]);
    out.sample_uniform = new ort.Tensor('float64', Float64Array.of(0), [1]);
  }
  if (empty('full_rows')) out.full_rows = int64([0]);
  return out as F;
}

/** `logit_index` with one dummy row (position 0) where it is empty (a run that wants no logits), for padHeadFeeds' index 0. */
export function padLogitIndex(feeds: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  if (Number(feeds.logit_index.dims[0]) > 0) return feeds;
  return { ...feeds, logit_index: int64([0]) };
}
