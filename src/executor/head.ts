import ort from 'onnxruntime-node';
import type { EnsembleGroup, Sampling, TokenChoice } from '../protocol.js';
import { chooseTokens, type RowLogits } from './ensemble-sampling.js';
import { drawWeighted, logSumExp, uniform } from './sampler.js';

/** One picked row of a step's logits, in `logit_index` order: a token to choose, or a score target's log-probability. */
export type HeadRow = { seq: number; sampling: Sampling; step: number; group?: EnsembleGroup; generated?: Map<number, number> } | { target: number };

/**
 * How a row's token is chosen with the graph head (src/model/sampling-head.ts). Each route reads only
 * its outputs; every one draws what sampler.ts's sample() draws from the full row, up to the
 * rounding of the weights (the graph's float32 softmax against the host's exp: see weightsOf).
 * - greedy: `next_greedy`.
 * - draw: temperature, with or without top-k/top-p: `draw_weights` through drawWeighted.
 * - host: the full row through the host sampler: logit_bias, presence and frequency penalties, and
 *   ensemble members (whose mixture is computed on the host).
 */
type Route = 'greedy' | 'draw' | 'host';

function routeOf(s: Sampling, group: EnsembleGroup | undefined): Route {
  if (group || s.logitBias?.length || s.penalties) return 'host';
  return s.temperature === 0 ? 'greedy' : 'draw';
}

const int64 = (xs: number[]) => new ort.Tensor('int64', BigInt64Array.from(xs, BigInt), [xs.length]);

/**
 * The sampling head's host side for one step: the row-index feeds from each row's Sampling, and the
 * outputs turned into TokenChoices and score log-probabilities. With a 'host'-mode graph (plain
 * `logits` for every row) it is today's host sampling, the oracle the graph head is tested against.
 */
export class StepHead {
  private readonly routes: (Route | 'score')[];
  /** Per row: its index into lp_rows, draw_rows and full_rows, or -1. */
  private readonly lp: number[] = [];
  private readonly draw: number[] = [];
  private readonly full: number[] = [];
  private readonly lpRows: number[] = [];
  private readonly drawRows: number[] = [];
  private readonly fullRows: number[] = [];
  private topCount = 1;

  constructor(
    private readonly rows: HeadRow[],
    private readonly V: number,
    /** The session's graph ends with the sampling head (its inputs include `draw_rows`). */
    private readonly graph: boolean,
    /** No zero-size feeds (the WebGPU provider crashes on them): an empty index input gets one dummy row, never read. */
    private readonly padEmpty = false,
  ) {
    this.routes = rows.map((row, n) => {
      const add = (list: number[], at: number[]) => at.push(list.push(n) - 1);
      const route = 'target' in row ? 'score' : graph ? routeOf(row.sampling, row.group) : 'host';
      const s = 'target' in row ? null : row.sampling;
      const asksLp = s !== null && (s.logprobs > 0 || !!s.chosenLogprob);
      if (route === 'score' || (route !== 'host' && asksLp)) {
        add(this.lpRows, this.lp);
        this.topCount = Math.max(this.topCount, s?.logprobs ?? 0);
      } else this.lp.push(-1);
      if (route === 'draw') add(this.drawRows, this.draw);
      else this.draw.push(-1);
      // A drawn token's log-probability needs its raw logit: the full row (rare: sampling with logprobs).
      if (route === 'host' || (route === 'draw' && asksLp)) add(this.fullRows, this.full);
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
    const feeds = {
      lp_rows: int64(this.lpRows),
      lp_targets: int64(this.lpRows.map((n) => ('target' in this.rows[n] ? (this.rows[n] as { target: number }).target : 0))),
      top_count: int64([this.topCount]),
      draw_rows: int64(this.drawRows),
      draw_temperature: new ort.Tensor('float32', Float32Array.from(this.drawRows, (n) => (this.rows[n] as Extract<HeadRow, { seq: number }>).sampling.temperature), [this.drawRows.length]),
      full_rows: int64(this.fullRows),
    };
    return this.padEmpty ? padHeadFeeds(feeds) : feeds;
  }

  /**
   * The outputs read() reads, for session.run's fetch list: onnxruntime-node turns each fetched
   * output into a new JS tensor, about 5 µs apiece here whether it holds anything or not (ad hoc), so
   * a greedy step fetches `next_greedy` alone of the head's seven.
   */
  outputs(): string[] {
    if (!this.graph) return ['logits'];
    const names: string[] = [];
    if (this.routes.includes('greedy')) names.push('next_greedy');
    if (this.lp.some((a, n) => a >= 0 && this.routes[n] !== 'score')) names.push('lp_lse', 'top_values', 'top_indices');
    if (this.routes.includes('score')) names.push('target_logprob');
    if (this.drawRows.length > 0) names.push('draw_weights');
    if (this.fullRows.length > 0) names.push('logits');
    return names;
  }

  /** Chosen tokens (plain rows in order, then one per ensemble group) and score rows' log-probabilities in order. */
  read(out: ort.InferenceSession.OnnxValueMapType): { chosen: TokenChoice[]; scores: number[] } {
    const V = this.V;
    // Outputs outside outputs() were not fetched: each is read only where a row needs it.
    const logits = out.logits?.data as Float32Array;
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
    const greedy = out.next_greedy?.data as BigInt64Array;
    const lse = out.lp_lse?.data as Float32Array;
    const values = out.top_values?.data as Float32Array;
    const indices = out.top_indices?.data as BigInt64Array;
    const targetLp = out.target_logprob?.data as Float32Array;
    const weights = out.draw_weights?.data as Float32Array;
    const k = this.topCount;
    this.rows.forEach((row, n) => {
      if ('target' in row) {
        scores.push(targetLp[this.lp[n]]);
        return;
      }
      const s = row.sampling;
      if (this.routes[n] === 'host') {
        hostRows.push({ ...row, logits: fullRow(n) });
        return;
      }
      const a = this.lp[n];
      const d = this.draw[n];
      const token = d < 0 ? Number(greedy[n]) : drawWeighted(weights.subarray(d * V, (d + 1) * V), s.topK, s.topP, uniform(s.seed, row.step));
      const choice: TokenChoice = { seq: row.seq, token };
      if (a >= 0) {
        // Greedy: the chosen token is the top one; drawn: its raw logit from the full row.
        choice.logprob = (d < 0 ? values[a * k] : fullRow(n)[token]) - lse[a];
        choice.top = Array.from({ length: s.logprobs }, (_, i) => ({ token: Number(indices[a * k + i]), logprob: values[a * k + i] - lse[a] }));
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
  const none = new ort.Tensor('float32', new Float32Array(0), [0]);
  const head = { lp_rows: int64([]), lp_targets: int64([]), top_count: int64([0]), draw_rows: int64([]), draw_temperature: none, full_rows: int64(Array.from({ length: n }, (_, i) => i)) };
  return { ...feeds, ...(padEmpty ? padHeadFeeds(head) : head) };
}

/**
 * The head's row-index feeds with every empty one given one dummy row (index 0, target 0,
 * temperature 1; top_count 1 with a dummy lp row), whose outputs nobody reads: for the WebGPU
 * provider, which crashes on zero-size inputs. Index 0 needs a picked row: see padLogitIndex.
 * Not on the CPU: a dummy row costs a softmax over the vocabulary per step.
 */
export function padHeadFeeds<F extends Record<string, ort.Tensor>>(feeds: F): F {
  const empty = (name: string) => Number(feeds[name].dims[0]) === 0;
  const out: Record<string, ort.Tensor> = { ...feeds };
  if (empty('lp_rows')) {
    out.lp_rows = int64([0]);
    out.lp_targets = int64([0]);
    out.top_count = int64([Math.max(1, Number((feeds.top_count.data as BigInt64Array)[0]))]);
  }
  if (empty('draw_rows')) {
    out.draw_rows = int64([0]);
    out.draw_temperature = new ort.Tensor('float32', Float32Array.of(1), [1]);
  }
  if (empty('full_rows')) out.full_rows = int64([0]);
  return out as F;
}

/** `logit_index` with one dummy row (position 0) where it is empty (a run that wants no logits), for padHeadFeeds' index 0. */
export function padLogitIndex(feeds: Record<string, ort.Tensor>): Record<string, ort.Tensor> {
  if (Number(feeds.logit_index.dims[0]) > 0) return feeds;
  return { ...feeds, logit_index: int64([0]) };
}
