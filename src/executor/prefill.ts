import ort from 'onnxruntime-node';
import type { ModelConfig } from '../model/checkpoint.js';
import type { AdapterTensors } from '../protocol.js';
import { NEG, type FeedContext } from './model-constants.js';
import type { LayerKv } from './kv-batch.js';
import type { PastKv } from './prompt-kv.js';

/** One row of a prefill run: a new sequence, or a one-shot scoring row. */
export interface PrefillItem {
  adapter: AdapterTensors | null;
  tokens: number[];
  /** Indices into the row's fed sequence (a soft prompt fed as embeddings included) whose logits are wanted. */
  logitAt: number[];
  /**
   * Keys/values the row starts after (src/executor/prompt-kv.ts): a prefix, or a soft prompt computed
   * once. Absent: a prefix adapter's rows are laid out here, and a soft prompt goes before the tokens.
   */
  past?: PastKv;
}

export interface PrefillLayout {
  feeds: Record<string, ort.Tensor>;
  /** Past and sequence columns of each batch row of the run. */
  P: number;
  S: number;
  /** Per item: prefix length and sequence length (virtual + real tokens). */
  prefix: number[];
  length: number[];
  /** Per item: its batch row, and the columns where its past and its sequence start in that row. */
  row: number[];
  pastAt: number[];
  seqAt: number[];
  /** Positions computed that belong to no item. */
  padded: number;
}

export function virtualTokens(a: AdapterTensors | null, kind: AdapterTensors['kind']): number {
  return a?.kind === kind ? a.virtualTokens : 0;
}

/** Soft-prompt rows fed as embeddings before the row's tokens: none when the row starts after its past. */
export function fedPrompt(it: PrefillItem): number {
  return it.past ? 0 : virtualTokens(it.adapter, 'prompt');
}

/** A row's length in a prefill run: its soft prompt where it is fed, then its tokens. */
export function fedLength(it: PrefillItem): number {
  return fedPrompt(it) + it.tokens.length;
}

/**
 * Feeds for a prefill run of ragged items (the rows' bias and adapter feeds, for the full graph,
 * come from FeedContext.rowFeeds). Two layouts, one graph: the attention bias says which columns
 * each query sees.
 * - padded: item r is batch row r, its past in columns [0, prefix_r) and its sequence in [0,
 *   length_r); everything else is padding that the mask hides from every query.
 * - packed: every item in batch row 0, one after another, pasts and sequences alike; each query
 *   sees only its own item's past and the item's earlier positions (a block-diagonal causal mask).
 *   No padding and one run, but per-row parameters cannot differ within a batch row, so only rows
 *   of the base graph are packed (see packedRuns), and attention grows with the square of the
 *   positions, so a packed run holds at most PACK_POSITIONS.
 * Positions follow PEFT: virtual tokens (soft prompt or prefix) take 0..n-1 and real tokens n...
 */
export function prefillFeeds(ctx: FeedContext, items: PrefillItem[], packed = false): PrefillLayout {
  const c = ctx.base.config;
  const { hidden: D, kvHeads: H, headDim: hd, layers: L } = c;
  const pasts = items.map((it) => it.past ?? (it.adapter?.kind === 'prefix' ? prefixPast(c, it.adapter) : undefined));
  const prefix = pasts.map((p) => p?.n ?? 0);
  const length = items.map(fedLength);
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  /** Where each item's columns start: one after another when packed, at 0 in its own row when padded. */
  const offsets = (xs: number[]) => {
    let at = 0;
    return xs.map((x) => (packed ? (at += x) - x : 0));
  };
  const row = items.map((_, r) => (packed ? 0 : r));
  const pastAt = offsets(prefix);
  const seqAt = offsets(length);
  const B = packed ? 1 : items.length;
  // At least one (masked) past column: the WebGPU provider crashes on zero-size inputs.
  const P = Math.max(1, packed ? sum(prefix) : Math.max(0, ...prefix));
  const S = Math.max(1, packed ? sum(length) : Math.max(0, ...length));
  const T = P + S;

  const embeds = new Float32Array(B * S * D);
  const positions = new BigInt64Array(B * S);
  const bias = new Float32Array(B * S * T).fill(NEG);
  const logitIndex: bigint[] = [];
  items.forEach((it, r) => {
    const at = row[r] * S + seqAt[r]; // the item's first position in the flattened [B·S]
    const vt = fedPrompt(it);
    if (vt > 0) embeds.set(it.adapter!.embeddings!.subarray(0, vt * D), at * D);
    it.tokens.forEach((tok, i) => ctx.embed(embeds, (at + vt + i) * D, tok));
    // A padded row's padding queries (i >= length) still see position 0, so their softmax stays finite.
    const queries = packed ? length[r] : S;
    for (let i = 0; i < queries; i++) {
      positions[at + i] = BigInt(Math.min(prefix[r] + i, c.nPositions - 1));
      const q = (at + i) * T;
      bias.fill(0, q + pastAt[r], q + pastAt[r] + prefix[r]);
      const last = Math.max(0, Math.min(i, length[r] - 1));
      bias.fill(0, q + P + seqAt[r], q + P + seqAt[r] + last + 1);
    }
    for (const k of it.logitAt) logitIndex.push(BigInt(at + k));
  });

  const feeds: Record<string, ort.Tensor> = {
    inputs_embeds: new ort.Tensor('float32', embeds, [B, S, D]),
    position_ids: new ort.Tensor('int64', positions, [B, S]),
    attn_bias: new ort.Tensor('float32', bias, [B, 1, S, T]),
    logit_index: new ort.Tensor('int64', BigInt64Array.from(logitIndex), [logitIndex.length]),
  };
  for (let l = 0; l < L; l++) {
    const keys = new Float32Array(B * H * P * hd); // [B, H, P, hd]
    const values = new Float32Array(B * H * P * hd);
    pasts.forEach((past, r) => {
      if (!past) return;
      copyPast(past.layers[l].keys, past.n, row[r], pastAt[r], H, hd, P, keys);
      copyPast(past.layers[l].values, past.n, row[r], pastAt[r], H, hd, P, values);
    });
    feeds[`past_key_${l}`] = new ort.Tensor('float32', keys, [B, H, P, hd]);
    feeds[`past_value_${l}`] = new ort.Tensor('float32', values, [B, H, P, hd]);
  }
  return { feeds, P, S, prefix, length, row, pastAt, seqAt, padded: B * S - sum(length) };
}

/**
 * What one more prefill run costs on the CPU, in padded positions: a run streams every weight once
 * and pays ONNX Runtime's per-op and per-feed overhead. Measured ad hoc on 2 cores, one thread: a
 * 5-token prefill run took 3.0–3.3 ms, against about 0.12 ms per position of a wide one.
 * bench/prefill-runs.ts compares costs of 8, 24 and 64: within 4 % of each other at 32 and 64 rows.
 */
export const RUN_COST = 24;

/** The cost of one more run on a provider. On WebGPU it has not been measured: a step keeps one run there. */
export function prefillRunCost(provider: 'cpu' | 'webgpu'): number {
  return provider === 'webgpu' ? Infinity : RUN_COST;
}

/**
 * Splits a step's new rows into runs of similar length, so that short prompts are not padded to
 * the longest: 64 of the benchmarks' prompts (4 to 26 tokens) arriving together made one run of
 * 1,664 positions, 892 of them padding (bench/prefill-runs.ts). `units` are what must share a run
 * (a row, or an ensemble's members, whose head mixes them), each with its rows and its widest
 * row's length. Minimises rows × width summed over the runs plus RUN_COST per run, over contiguous
 * runs of the units sorted by width (an optimal split never interleaves widths); ties go to fewer
 * runs. The cost model leaves out a row's past columns (a prefix, a cached soft prompt) and which
 * graph a run takes: both are small beside the positions. Returns unit indices per run, narrowest
 * run first.
 */
export function lengthRuns(units: { rows: number; width: number }[], runCost = RUN_COST): number[][] {
  const order = units.map((_, i) => i).sort((a, b) => units[a].width - units[b].width);
  const n = order.length;
  if (n === 0) return [];
  if (runCost === Infinity) return [order];
  // best[i]: the cheapest split of the i narrowest units; cut[i]: where its last run starts.
  const best = new Float64Array(n + 1);
  const cut = new Int32Array(n + 1);
  for (let i = 1; i <= n; i++) {
    best[i] = Infinity;
    let rows = 0;
    for (let j = i - 1; j >= 0; j--) {
      rows += units[order[j]].rows;
      const cost = best[j] + rows * units[order[i - 1]].width + runCost;
      if (cost <= best[i]) {
        best[i] = cost;
        cut[i] = j;
      }
    }
  }
  const runs: number[][] = [];
  for (let i = n; i > 0; i = cut[i]) runs.unshift(order.slice(cut[i], i));
  return runs;
}

/** Past columns an item's queries see: its computed soft prompt or its prefix. */
export function pastColumns(it: PrefillItem): number {
  return it.past?.n ?? virtualTokens(it.adapter, 'prefix');
}

/**
 * Attention's cost per query and column it attends over (masked or not), in RUN_COST's unit (one
 * position's weight reads and arithmetic). Fitted to bench/prefill-runs.ts (twelfth pass; 1
 * thread): packed runs of 48 to 512 positions over the same 64 rows took 74.2 to 109.5 ms, about
 * 0.08 ms a position and 0.00016 ms a query-column pair. It matters where rows carry past columns:
 * a packed run's queries see every row's past, so 64 one-token rows with a 16-column prefix ran
 * 1.7× slower packed than padded (adversarial review).
 */
export const PAIR_COST = 0.002;

/** A run's cost in that model: RUN_COST, the positions it computes (padding included), and its attention. */
export function runCost(rows: { fed: number; past: number }[], packed: boolean): number {
  const n = rows.length;
  const fed = rows.map((r) => r.fed);
  const past = rows.map((r) => r.past);
  const S = packed ? fed.reduce((a, b) => a + b, 0) : n * Math.max(0, ...fed);
  const columns = packed ? S + past.reduce((a, b) => a + b, 0) : Math.max(0, ...fed) + Math.max(0, ...past);
  return RUN_COST + S + PAIR_COST * S * columns;
}

/**
 * The runs of units that may be packed (rows of the base graph; a unit is what must share a run,
 * each of its rows' fed positions and past columns): packed runs of at most `pack` positions, or
 * runs of similar length, whichever costs less in the model above. Returns unit indices per run.
 */
export function packOrSplit(units: { fed: number; past: number }[][], pack: number, runCostOf = RUN_COST): { packed: boolean; runs: number[][] } {
  const split = lengthRuns(units.map((u) => ({ rows: u.length, width: Math.max(...u.map((r) => r.fed)) })), runCostOf);
  if (pack <= 0) return { packed: false, runs: split };
  const packs = packedRuns(units.map((u) => u.reduce((n, r) => n + r.fed, 0)), pack);
  const cost = (runs: number[][], packed: boolean) => runs.reduce((sum, run) => sum + runCost(run.flatMap((k) => units[k]), packed), 0);
  return cost(packs, true) < cost(split, false) ? { packed: true, runs: packs } : { packed: false, runs: split };
}

/**
 * Positions a packed run holds at most: each of its S queries attends over all its P + S columns
 * (most of them masked), a cost that grows with S², against which more runs cost their weight
 * reads again. bench/prefill-runs.ts (README, twelfth pass; 1 thread, 4 to 64 of the benchmarks'
 * prompts): packs of 64 ran 1.01–1.17× faster than runs of similar length, and packs of 48 or 96
 * no faster beyond the noise; packs of 256 and 512 were slower than those runs at 32 and 64 rows.
 */
export const PACK_POSITIONS = 64;

/** Packed runs' size on a provider; 0: none. On WebGPU a step keeps its one padded run (not measured there). */
export function packPositions(provider: 'cpu' | 'webgpu'): number {
  return provider === 'webgpu' ? 0 : PACK_POSITIONS;
}

/**
 * Units (what must share a run, as in lengthRuns) of `positions` each, in packed runs of at most
 * `limit` positions: narrowest first, each run filled until the next would pass the limit; a unit
 * wider than the limit runs alone. Returns unit indices per run.
 */
export function packedRuns(positions: number[], limit = PACK_POSITIONS): number[][] {
  const runs: number[][] = [];
  let size = Infinity;
  for (const u of positions.map((_, i) => i).sort((a, b) => positions[a] - positions[b])) {
    if (size + positions[u] > limit) {
      runs.push([]);
      size = 0;
    }
    runs[runs.length - 1].push(u);
    size += positions[u];
  }
  return runs;
}

/** One layer's keys or values of a row's past ([H, n, hd]) into row r of a past feed [B, H, P, hd], from column `at`. */
function copyPast(src: Float32Array, n: number, r: number, at: number, H: number, hd: number, P: number, dst: Float32Array): void {
  for (let h = 0; h < H; h++) dst.set(src.subarray(h * n * hd, (h + 1) * n * hd), ((r * H + h) * P + at) * hd);
}

/** A prefix adapter's keys/values in a past's layout. PEFT's prefix layout: E[t, (2l)·KVD + h·hd + d] is the key, E[t, (2l+1)·KVD + h·hd + d] the value. */
export function prefixPast(c: ModelConfig, a: AdapterTensors): PastKv {
  const { kvHeads: H, headDim: hd, layers: L } = c;
  const KVD = H * hd;
  const n = a.virtualTokens;
  const E = a.embeddings!;
  const stride = 2 * L * KVD;
  const layers: LayerKv[] = [];
  for (let l = 0; l < L; l++) {
    const keys = new Float32Array(H * n * hd);
    const values = new Float32Array(H * n * hd);
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < n; t++) {
        const src = t * stride + h * hd;
        keys.set(E.subarray(src + 2 * l * KVD, src + 2 * l * KVD + hd), (h * n + t) * hd);
        values.set(E.subarray(src + (2 * l + 1) * KVD, src + (2 * l + 1) * KVD + hd), (h * n + t) * hd);
      }
    }
    layers.push({ keys, values });
  }
  return { n, layers };
}
