import type { Sampling, TokenChoice } from '../protocol.js';

/**
 * Uniform in [0, 1) from (seed, step) alone: a counter-based stream, so a seeded request draws
 * the same numbers whatever else shares its batch and whichever step order the batch runs in.
 */
export function uniform(seed: number, step: number): number {
  let h = (Math.imul(seed | 0, 0x9e3779b1) ^ Math.imul(step + 1, 0x85ebca77)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  // Mix in the seed's high bits too, so seeds that differ only above 2^32 still differ.
  h = (h ^ Math.imul(Math.floor(seed / 2 ** 32) | 0, 0x27d4eb2d)) >>> 0;
  return h / 2 ** 32;
}

/** log(sum(exp(logits))) computed stably. */
export function logSumExp(logits: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return max + Math.log(sum);
}

/**
 * Indices of the `k` largest logits, largest first, ties by lower index. One pass keeps the best k
 * seen in a min-heap whose root is the threshold to beat; past the first few thousand entries
 * almost none beats it, so the pass is O(V) in practice and O(V log k) at worst (k ≤ 1000).
 */
export function topIndices(logits: Float32Array, k: number): number[] {
  const n = Math.min(k, logits.length);
  if (n <= 0) return [];
  // a ranks below b: lower logit, or the same logit at a higher index.
  const below = (a: number, b: number) => logits[a] < logits[b] || (logits[a] === logits[b] && a > b);
  const heap = new Int32Array(n);
  let size = 0;
  for (let i = 0; i < logits.length; i++) {
    if (size < n) {
      let at = size++;
      while (at > 0) {
        const up = (at - 1) >> 1;
        if (!below(i, heap[up])) break;
        heap[at] = heap[up];
        at = up;
      }
      heap[at] = i;
    } else if (below(heap[0], i)) {
      let at = 0;
      for (;;) {
        const l = 2 * at + 1;
        if (l >= n) break;
        const c = l + 1 < n && below(heap[l + 1], heap[l]) ? l + 1 : l;
        if (!below(heap[c], i)) break;
        heap[at] = heap[c];
        at = c;
      }
      heap[at] = i;
    }
  }
  return Array.from(heap).sort((a, b) => logits[b] - logits[a] || a - b);
}

/** Chooses the next token from one row of logits; the log-probabilities reported are before temperature. */
export function sample(seq: number, logits: Float32Array, s: Sampling, step: number): TokenChoice {
  // The row's logits are this step's output buffer: biasing them in place costs one add per entry.
  if (s.logitBias) for (const [id, bias] of s.logitBias) logits[id] += bias;
  let token: number;
  if (s.temperature === 0) {
    token = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[token]) token = i;
  } else {
    token = drawWeighted(weightsOf(logits, s.temperature), s.topK, s.topP, uniform(s.seed, step));
  }
  const choice: TokenChoice = { seq, token };
  // log-softmax costs an exp per vocabulary entry: paid only by requests that ask for logprobs.
  if (s.logprobs > 0 || s.chosenLogprob) {
    const lse = logSumExp(logits);
    choice.logprob = logits[token] - lse;
    choice.top = topIndices(logits, s.logprobs).map((t) => ({ token: t, logprob: logits[t] - lse }));
  }
  return choice;
}

/**
 * exp(l / T − max) of every token (l / T rounded to float32 first), in float32: the host's
 * counterpart of the graph head's softmax(logits / T) (src/model/sampling-head.ts). Only ratios
 * matter to drawWeighted, so the two differ by rounding alone: the graph subtracts and exponentiates
 * in float32, so a weight moves by a few float32 ulps of l / T (more relative error the larger
 * l / T is). A draw differs only if its target falls that close to a boundary between tokens
 * (test/executor/sampling-head.test.ts compares every route on every reference prompt).
 */
export function weightsOf(logits: Float32Array, temperature: number): Float32Array {
  const w = new Float32Array(logits.length);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    w[i] = logits[i] / temperature;
    if (w[i] > max) max = w[i];
  }
  for (let i = 0; i < logits.length; i++) w[i] = Math.exp(w[i] - max);
  return w;
}

/** Buckets of weights by their top 11 bits (a non-negative float32's sign 0, exponent, 2 mantissa bits): heavier buckets have higher numbers. */
const BUCKET_SHIFT = 21;
const BUCKETS = 1 << (32 - BUCKET_SHIFT - 1);
/**
 * Scratch for drawWeighted, reused (a worker thread draws one row at a time): masses and counts per
 * bucket in four interleaved copies (token i adds to copy i % 4), so that neighbours falling in the
 * same bucket do not wait on each other's add; the copies are summed per bucket after the pass.
 */
const COPIES = 4; // the index below is (bucket << 2) | (i & 3)
const partMass = new Float64Array(BUCKETS * COPIES);
const partCount = new Int32Array(BUCKETS * COPIES);
const bucketMass = new Float64Array(BUCKETS);
const bucketCount = new Int32Array(BUCKETS);

/**
 * The draw of temperature sampling with top-k and top-p, from a row of non-negative weights (their
 * scale does not matter). Definition (test/executor/sampler.test.ts checks it against a full sort;
 * the float64 sums are taken bucket by bucket rather than in rank order, which can move a cut only
 * when top_p lies within about 1e-16 of a running sum): rank the tokens by weight, largest first, ties by lower id; keep the first `topK` (all if
 * 0); then top-p keeps the shortest ranked prefix of those whose weights sum (float64) to at least
 * `topP` × the kept total; then `u` × the kept mass is walked through the kept tokens in vocabulary
 * order, and the token where it runs out is drawn. Walking in vocabulary order rather than rank
 * order gives the same distribution without sorting: the cuts need only a threshold, found from the
 * masses of the weights' float-bit buckets (one pass) and a sort of the one bucket it falls in.
 * About three passes over the row where a sort of a flat 50k-token row takes milliseconds.
 */
export function drawWeighted(w: Float32Array, topK: number, topP: number, u: number): number {
  return (topK > 0 && topK < w.length) || topP < 1 ? drawCut(w, topK, topP, u) : walk(w, u * sum(w), -1, w.length);
}

/** drawWeighted with a top-k or top-p cut. */
function drawCut(w: Float32Array, topK: number, topP: number, u: number): number {
  const V = w.length;
  if (V >= 2 ** 21) throw new Error(`a vocabulary of ${V} is over drawWeighted's 2^21`);
  const cutK = topK > 0 && topK < V;
  const bits = new Int32Array(w.buffer, w.byteOffset, V); // a non-negative float's bits order as ints
  histogram(w, bits);
  let keepId = -1; // the last kept token in rank order; -1: all are
  let kept = 0; // the kept tokens' total weight
  let edge = -1; // with top-k, the bucket of the k-th ranked token: only `members` of it are kept
  let members: number[] = [];
  if (cutK) {
    for (let b = BUCKETS - 1, n = 0; b >= 0; b--) {
      if (n + bucketCount[b] >= topK) {
        edge = b;
        members = rankedMembers(bits, b).slice(0, topK - n);
        break;
      }
      n += bucketCount[b];
      kept += bucketMass[b];
    }
    for (const i of members) kept += w[i];
    keepId = members[members.length - 1];
  } else for (let b = BUCKETS - 1; b >= 0; b--) kept += bucketMass[b];
  if (topP < 1) {
    // The kept buckets from the top until they hold topP of the kept total, then the ranked members
    // of the bucket where that is reached, one by one. (Rounding may leave `need` unreached by a
    // hair: then the cut falls at the last token looked at.)
    const need = topP * kept;
    let mass = 0;
    let b = BUCKETS - 1;
    for (; b > edge; b--) {
      if (mass + bucketMass[b] >= need && bucketMass[b] > 0) break;
      mass += bucketMass[b];
    }
    for (const i of b === edge ? members : rankedMembers(bits, b)) {
      mass += w[i];
      keepId = i;
      if (mass >= need) break;
    }
    kept = mass;
  }
  return keepId < 0 ? walk(w, u * kept, -1, V) : walk(w, u * kept, w[keepId], keepId);
}

/** Σ w in float64, in two running sums (halves the add chain's latency). */
function sum(w: Float32Array): number {
  const n = w.length;
  let a = 0;
  let b = 0;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    a += w[i];
    b += w[i + 1];
  }
  if (i < n) a += w[i];
  return a + b;
}

/**
 * Walks `target` through the kept tokens (weight above `keepW`, or equal to it at an id ≤ `keepId`;
 * every token when `keepW` is −1) in vocabulary order: the first where it runs out. Rounding may
 * leave a sliver: then the last kept token that has weight.
 */
function walk(w: Float32Array, target: number, keepW: number, keepId: number): number {
  const n = w.length;
  if (keepW < 0) {
    for (let i = 0; i < n; i++) if ((target -= w[i]) < 0) return i;
  } else {
    for (let i = 0; i < n; i++) {
      const x = w[i];
      if (x < keepW || (x === keepW && i > keepId)) continue;
      if ((target -= x) < 0) return i;
    }
  }
  const kept = (i: number) => w[i] > 0 && (keepW < 0 || w[i] > keepW || (w[i] === keepW && i <= keepId));
  let last = n - 1;
  while (last > 0 && !kept(last)) last--;
  return last;
}

/** bucketMass and bucketCount of a row, in one pass. */
function histogram(w: Float32Array, bits: Int32Array): void {
  partMass.fill(0);
  partCount.fill(0);
  const n = w.length;
  for (let i = 0; i < n; i++) {
    const at = ((bits[i] >>> BUCKET_SHIFT) << 2) | (i & 3);
    partMass[at] += w[i];
    partCount[at]++;
  }
  for (let b = 0; b < BUCKETS; b++) {
    const at = b << 2;
    bucketMass[b] = partMass[at] + partMass[at + 1] + (partMass[at + 2] + partMass[at + 3]);
    bucketCount[b] = partCount[at] + partCount[at + 1] + partCount[at + 2] + partCount[at + 3];
  }
}

/** The ids whose weights fall in bucket `b`, in rank order (larger weight first, ties by lower id). */
function rankedMembers(bits: Int32Array, b: number): number[] {
  // Each member as one number, (2^31 − bits) · 2^21 + id (exact below 2^53): a plain numeric sort
  // of them is the rank order, and runs natively, with no comparator called back.
  const count = bucketCount[b];
  const keys = new Float64Array(count);
  const n = bits.length;
  for (let i = 0, k = 0; k < count && i < n; i++) if (bits[i] >>> BUCKET_SHIFT === b) keys[k++] = (2 ** 31 - bits[i]) * 2 ** 21 + i;
  keys.sort();
  const ids = new Array<number>(count);
  for (let k = 0; k < count; k++) ids[k] = keys[k] % 2 ** 21;
  return ids;
}
