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

/**
 * Chooses the next token from one row of logits; the log-probabilities reported are before
 * temperature, after logit_bias and penalties. `generated`: the counts of the tokens the row has
 * generated, for its penalties.
 */
export function sample(seq: number, logits: Float32Array, s: Sampling, step: number, generated?: Map<number, number>): TokenChoice {
  // The row's logits are this step's output buffer: biasing them in place costs one add per entry.
  if (s.logitBias) for (const [id, bias] of s.logitBias) logits[id] += bias;
  if (s.penalties && generated) for (const [id, count] of generated) logits[id] -= s.penalties.frequency * count + s.penalties.presence;
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
 * the float64 sums are taken bucket by bucket or block by block rather than in rank or vocabulary
 * order, which can move a cut or the drawn token only when top_p or the walked target lies within
 * about 1e-16 of a running sum): rank the tokens by weight, largest first, ties by lower id; keep
 * the first `topK` (all if 0); then top-p keeps the shortest ranked prefix of those whose weights sum (float64) to at least
 * `topP` × the kept total; then `u` × the kept mass is walked through the kept tokens in vocabulary
 * order, and the token where it runs out is drawn. Walking in vocabulary order rather than rank
 * order gives the same distribution without sorting: the cuts need only a threshold, found from the
 * masses of the weights' float-bit buckets (one pass) and a sort of the one bucket it falls in.
 * Passes over the whole row, where a sort of a flat 50k-token row takes milliseconds: one for top-p
 * alone (drawNucleus), two for top-k alone (drawTopK), three for both (drawCut); the rest looks at
 * the few ids that can be kept.
 */
export function drawWeighted(w: Float32Array, topK: number, topP: number, u: number): number {
  const cutK = topK > 0 && topK < w.length;
  if (!cutK && topP >= 1) return walk(w, u * sum(w), -1, w.length);
  if (w.length >= 2 ** 21) throw new Error(`a vocabulary of ${w.length} is over drawWeighted's 2^21`);
  if (cutK && topP >= 1) return drawTopK(w, topK, u);
  if (!cutK && topP <= NUCLEUS_TOP_P_BELOW) return drawNucleus(w, topP, u);
  return drawCut(w, topK, topP, u);
}

/**
 * drawNucleus's bound leaves (1 − topP)·T/2 of weight between the ids it collects and the cut; at
 * this top_p that is still 5e-7 of the total, far above the rounding of a float64 sum of 2^21
 * weights (about 2^21 · 2^-53 of it). Above it, top-p takes the general path.
 */
const NUCLEUS_TOP_P_BELOW = 1 - 1e-6;

/**
 * The smallest total weight for which drawNucleus's bound holds. The rows drawn from have more:
 * the graph head's softmax sums to 1, and weightsOf's largest weight is 1.
 */
const NUCLEUS_TOTAL_AT_LEAST = 0.9;

/**
 * drawWeighted with top-p alone: drawCut's draw (up to the order of its float64 sums), from the few
 * hundred ids that can be in the nucleus. A token of weight w ≤ (1 − topP)·T/V (T the row's total)
 * is never in it: the tokens ranked before it hold at least T − V·w ≥ topP·T. One pass sums the row and collects the
 * ids above half that bound (taking T ≥ NUCLEUS_TOTAL_AT_LEAST, checked after; the comparison is
 * on the float bits, which order as ints, and writes every id, moving the count only for those
 * kept: no branch to mispredict); the histogram, the cut and the walk then look at those alone.
 * The margin, (1 − topP)·T/2 of weight, is far beyond any rounding (see NUCLEUS_TOP_P_BELOW).
 */
function drawNucleus(w: Float32Array, topP: number, u: number): number {
  const V = w.length;
  const bits = new Int32Array(w.buffer, w.byteOffset, V);
  if (collected.length < V) collected = new Int32Array(V);
  const ids = collected;
  const bound = floatBits(((1 - topP) * NUCLEUS_TOTAL_AT_LEAST) / (2 * V));
  // Four running sums (a quarter of the add chain's latency); the ids counted without a branch.
  const one = (i: number) => bit(bits[i] > bound);
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let n = 0;
  let i = 0;
  for (; i + 3 < V; i += 4) {
    s0 += w[i];
    s1 += w[i + 1];
    s2 += w[i + 2];
    s3 += w[i + 3];
    ids[n] = i;
    n += one(i);
    ids[n] = i + 1;
    n += one(i + 1);
    ids[n] = i + 2;
    n += one(i + 2);
    ids[n] = i + 3;
    n += one(i + 3);
  }
  for (; i < V; i++) {
    s0 += w[i];
    ids[n] = i;
    n += one(i);
  }
  const total = s0 + s1 + (s2 + s3);
  if (!(total >= NUCLEUS_TOTAL_AT_LEAST)) return drawCut(w, 0, topP, u); // a row of another scale: the bound does not hold
  bucketMass.fill(0);
  bucketCount.fill(0);
  for (let k = 0; k < n; k++) {
    const b = bits[ids[k]] >>> BUCKET_SHIFT;
    bucketMass[b] += w[ids[k]];
    bucketCount[b]++;
  }
  const need = topP * total;
  let mass = 0;
  let b = BUCKETS - 1;
  for (; b > 0; b--) {
    if (bucketCount[b] === 0) continue;
    if (mass + bucketMass[b] >= need) break;
    mass += bucketMass[b];
  }
  let keepId = -1;
  for (const i of rankedMembers(bits, b, n)) {
    mass += w[i];
    keepId = i;
    if (mass >= need) break;
  }
  if (!(mass >= need)) return drawCut(w, 0, topP, u); // never, by the margin above: kept as a guard
  return walkCollected(w, n, u * mass, keepId);
}

/**
 * drawWeighted with top-k alone: drawCut's draw, up to the rounding of the float64 sums (taken
 * block by block here). A count per bucket finds the edge, the bucket of the k-th ranked token.
 * One more pass, without a branch (with k in the hundreds or thousands a branch on "kept" would be
 * mispredicted often), sums the weight above the edge in each block of BLOCK ids and collects the
 * edge's members; their rank order gives the kept ones, whose weight joins their blocks. The walk
 * then skips whole blocks before stepping through one.
 */
function drawTopK(w: Float32Array, topK: number, u: number): number {
  const V = w.length;
  const bits = new Int32Array(w.buffer, w.byteOffset, V);
  bucketCount.fill(0);
  for (let i = 0; i < V; i++) bucketCount[bits[i] >>> BUCKET_SHIFT]++;
  let edge = BUCKETS - 1;
  let before = 0;
  for (; edge >= 0 && before + bucketCount[edge] < topK; edge--) before += bucketCount[edge];
  // Weights that are not non-negative numbers (−0's bits fall outside every bucket; NaN's in the
  // top one): the general path, whose walk compares weights as numbers.
  if (edge < 0 || edge === BUCKETS - 1) return drawCut(w, topK, 1, u);
  const aboveMin = (edge + 1) << BUCKET_SHIFT; // the bits of the smallest weight above the edge
  const blocks = Math.ceil(V / BLOCK);
  if (blockMass.length < blocks) blockMass = new Float64Array(blocks);
  if (collected.length < V) collected = new Int32Array(V);
  const ids = collected;
  let n = 0; // the edge's members, collected in `ids`
  for (let b = 0; b < blocks; b++) {
    const start = b * BLOCK;
    const end = Math.min(V, start + BLOCK);
    let m0 = 0; // two running sums: half the add chain's latency
    let m1 = 0;
    let i = start;
    for (; i + 1 < end; i += 2) {
      m0 += w[i] * bit(bits[i] >= aboveMin);
      m1 += w[i + 1] * bit(bits[i + 1] >= aboveMin);
      ids[n] = i;
      n += bit(bits[i] >>> BUCKET_SHIFT === edge);
      ids[n] = i + 1;
      n += bit(bits[i + 1] >>> BUCKET_SHIFT === edge);
    }
    if (i < end) {
      m0 += w[i] * bit(bits[i] >= aboveMin);
      ids[n] = i;
      n += bit(bits[i] >>> BUCKET_SHIFT === edge);
    }
    blockMass[b] = m0 + m1;
  }
  const members = rankedMembers(bits, edge, n).slice(0, topK - before);
  for (const i of members) blockMass[i >> BLOCK_SHIFT] += w[i];
  let kept = 0;
  for (let b = 0; b < blocks; b++) kept += blockMass[b];
  const keepId = members[members.length - 1];
  const keepBits = bits[keepId];
  // Kept: bits above the last kept token's, or equal at an id ≤ its id (the bits of non-negative
  // floats order as ints): one threshold per id, keepBits up to keepId and keepBits + 1 after it.
  const min = (i: number) => (i <= keepId ? keepBits : keepBits + 1);
  let target = u * kept;
  for (let b = 0; b < blocks; b++) {
    if (target - blockMass[b] >= 0) {
      target -= blockMass[b];
      continue;
    }
    for (let i = b * BLOCK, end = Math.min(V, i + BLOCK); i < end; i++) if (bits[i] >= min(i) && (target -= w[i]) < 0) return i;
  }
  // A sliver left by rounding: the last kept token that has weight.
  let last = V - 1;
  while (last > 0 && !(w[last] > 0 && bits[last] >= min(last))) last--;
  return last;
}

/** Ids per block of drawTopK's walk: 2^BLOCK_SHIFT. */
const BLOCK_SHIFT = 6;
const BLOCK = 1 << BLOCK_SHIFT;
/** Scratch: drawTopK's kept weight per block (grown to the longest row seen). */
let blockMass = new Float64Array(0);

/**
 * walk() over the first `n` collected ids (ascending), the kept ones being those of weight above
 * w[keepId], or equal to it at an id ≤ keepId: the first where `target` runs out. Rounding may
 * leave a sliver: then the last kept token that has weight.
 */
function walkCollected(w: Float32Array, n: number, target: number, keepId: number): number {
  const ids = collected;
  const keepW = w[keepId];
  let last = keepId;
  for (let k = 0; k < n; k++) {
    const i = ids[k];
    const x = w[i];
    if (x < keepW || (x === keepW && i > keepId)) continue;
    if ((target -= x) < 0) return i;
    if (x > 0) last = i;
  }
  return last;
}

/** 1 for true, 0 for false, without a branch (`true | 0` is 1). */
const bit = (b: boolean) => (b as unknown as number) | 0;

/** The bits of a non-negative number as float32 (rounded to nearest). */
function floatBits(x: number): number {
  floatScratch[0] = x;
  return bitsScratch[0];
}
const floatScratch = new Float32Array(1);
const bitsScratch = new Int32Array(floatScratch.buffer);

/** drawWeighted with a top-k or top-p cut. */
function drawCut(w: Float32Array, topK: number, topP: number, u: number): number {
  const V = w.length;
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

/** Scratch: the ids drawNucleus and drawTopK collect, in vocabulary order (grown to the longest row seen). */
let collected = new Int32Array(0);

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

/**
 * The ids whose weights fall in bucket `b`, in rank order (larger weight first, ties by lower id):
 * of the whole row, or with `n`, of the first n `collected` ids (then bucketCount[b] must count
 * the bucket's collected ids: drawNucleus's histogram is of those, drawTopK collects the whole edge).
 */
function rankedMembers(bits: Int32Array, b: number, n = -1): number[] {
  // Each member as one number, (2^31 − bits) · 2^21 + id (exact below 2^53): a plain numeric sort
  // of them is the rank order, and runs natively, with no comparator called back.
  const keys = new Float64Array(bucketCount[b]);
  let m = 0;
  if (n < 0) {
    for (let i = 0; m < keys.length && i < bits.length; i++) if (bits[i] >>> BUCKET_SHIFT === b) keys[m++] = (2 ** 31 - bits[i]) * 2 ** 21 + i;
  } else {
    for (let k = 0; k < n; k++) {
      const i = collected[k];
      if (bits[i] >>> BUCKET_SHIFT === b) keys[m++] = (2 ** 31 - bits[i]) * 2 ** 21 + i;
    }
  }
  return idsOfKeys(keys.sort());
}

/** The ids of sorted rank keys: each key's low 21 bits (computed without a float modulo, a slow call). */
function idsOfKeys(keys: Float64Array): number[] {
  const ids = new Array<number>(keys.length);
  for (let k = 0; k < keys.length; k++) ids[k] = keys[k] - Math.floor(keys[k] / 2 ** 21) * 2 ** 21;
  return ids;
}
