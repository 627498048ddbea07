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
    token = sampleTemperature(logits, s, uniform(s.seed, step));
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

function sampleTemperature(logits: Float32Array, s: Sampling, u: number): number {
  if (s.topK === 0 && s.topP >= 1) return sampleFull(logits, s.temperature, u);
  // Candidates by probability; top-k then top-p cut the tail before renormalising.
  const { order, probs, total } = s.topK > 0 && s.topK < logits.length ? topK(logits, s.topK, s.temperature) : topP(logits, s.topP, s.temperature);
  return pickCandidate(order, probs, total, s.topP, u);
}

/**
 * The draw among candidates (most likely first, `probs` unnormalised, `total` the mass they are a
 * share of): top-p keeps the shortest prefix holding `topP` of `total`, then `u` picks in its mass.
 * The graph head (src/executor/head.ts) calls it with TopK's candidates, so both paths draw alike.
 */
export function pickCandidate(order: ArrayLike<number>, probs: number[], total: number, topP: number, u: number): number {
  const keep = nucleusSize(probs, total, topP);
  const kept = probs.slice(0, keep).reduce((a, b) => a + b, 0);
  let target = u * kept;
  for (let i = 0; i < keep; i++) {
    target -= probs[i];
    if (target < 0) return order[i];
  }
  return order[keep - 1];
}

/** How many of the candidates top-p keeps: the shortest prefix holding `topP` of `total` (all of them if none does). */
export function nucleusSize(probs: number[], total: number, topP: number): number {
  if (topP >= 1) return probs.length;
  let mass = 0;
  for (let i = 0; i < probs.length; i++) {
    mass += probs[i] / total;
    if (mass >= topP) return i + 1;
  }
  return probs.length;
}

/** exp((v − max) / T) of candidates in order, max the first (the row's largest): their unnormalised probabilities. */
export function candidateWeights(values: ArrayLike<number>, count: number, temperature: number): number[] {
  const probs = new Array<number>(count);
  for (let i = 0; i < count; i++) probs[i] = Math.exp((values[i] - values[0]) / temperature);
  return probs;
}

/** The k most likely tokens in order, their unnormalised probabilities and their sum. */
function topK(logits: Float32Array, k: number, temperature: number) {
  const order = topIndices(logits, k);
  const probs = candidateWeights(Float32Array.from(order, (t) => logits[t]), order.length, temperature);
  return { order, probs, total: probs.reduce((a, b) => a + b, 0) };
}

/**
 * Top-p over the whole vocabulary without sorting it: the total comes from one pass, then the
 * most likely m, 4m, 16m... tokens are selected (one pass each) until they hold `p` of the mass.
 */
function topP(logits: Float32Array, p: number, temperature: number) {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += Math.exp((logits[i] - max) / temperature);
  // Each token holds at most 1 of `total` (the top one, relative to itself): fewer than p · total
  // tokens cannot hold p of the mass, so the search starts there (a flat row goes straight to a sort).
  for (let m = Math.max(64, Math.ceil(p * total)); ; m *= 4) {
    // A flat row whose nucleus is most of the vocabulary: one sort beats a heap that large.
    const order = m * 4 >= logits.length ? Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b) : topIndices(logits, m);
    const probs = order.map((t) => Math.exp((logits[t] - max) / temperature));
    if (order.length === logits.length || probs.reduce((a, b) => a + b, 0) / total >= p) return { order, probs, total };
  }
}

/** Plain temperature sampling: no order is needed, so no sort. */
function sampleFull(logits: Float32Array, temperature: number, u: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += probs[i] = Math.exp((logits[i] - max) / temperature);
  let target = u * total;
  for (let i = 0; i < logits.length; i++) {
    target -= probs[i];
    if (target < 0) return i;
  }
  return logits.length - 1;
}
